//! The replicated store under real faults, through real processes and the REST API: members
//! killed with SIGKILL and restarted, paused with SIGSTOP, and cut off at the transport with
//! iptables. Checked afterwards: every acknowledged write is on every member, the members hold
//! identical state, and the history of reads and writes is linearizable per key (todc-utils'
//! Wing–Gong–Lowe checker).

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use support::rest::Api;
use support::{Gateway, Net, Spec, eventually};
use todc_utils::linearizability::WGLChecker;
use todc_utils::linearizability::history::{Action, History};
use todc_utils::specifications::Specification;

const UP: Duration = Duration::from_secs(30);
const CLUSTERS: [&str; 3] = ["east", "west", "edge"];

/// One member of the test mesh, restartable.
struct Member {
    cluster: &'static str,
    host: u8,
    gw: Option<Gateway>,
}

/// A three-cluster mesh formed by joins; returns the members and an admin token.
fn form_mesh(net: &Net) -> (Vec<Member>, String) {
    let east = Spec::new("east", 1).start(net);
    let token = support::admin_token(&net.data_dir("east"));
    let admin = api_for(&east, &token);
    eventually("east founded", UP, || {
        (admin.raw("GET", "/v1/status", None).status == 200).then_some(())
    });
    let mut members = vec![Member {
        cluster: "east",
        host: 1,
        gw: Some(east),
    }];
    for (i, cluster) in CLUSTERS.iter().enumerate().skip(1) {
        let created = admin.post_json("/v1/tokens", &json!({"role": "join"}));
        assert_eq!(created.status, 201, "{}", created.text);
        let join = created.json["token"].as_str().unwrap().to_string();
        let via = members[0].gw.as_ref().unwrap();
        let gw = Spec::new(cluster, i as u8 + 1).join(via, &join).start(net);
        members.push(Member {
            cluster,
            host: i as u8 + 1,
            gw: Some(gw),
        });
    }
    eventually("three voters", UP, || {
        let s = admin.raw("GET", "/v1/status", None);
        let voters = s.json["members"]
            .as_array()?
            .iter()
            .filter(|m| m["role"] == "voter")
            .count();
        (voters == 3).then_some(())
    });
    (members, token)
}

fn api_for(gw: &Gateway, token: &str) -> Api {
    Api::of(gw, Some(token))
}

/// A register per key, holding the last value written (0: never written).
struct Register;

#[derive(Clone, Copy, Debug)]
enum Op {
    Read(u64),
    Write(u64),
}

impl Specification for Register {
    type State = u64;
    type Operation = Op;
    fn init() -> u64 {
        0
    }
    fn apply(op: &Op, state: &u64) -> (bool, u64) {
        match *op {
            Op::Read(v) => (v == *state, *state),
            Op::Write(v) => (true, v),
        }
    }
}

/// Calls and responses of one key's operations, each with its process, in real-time order.
type Actions = Vec<(usize, Action<Op>)>;

/// What the workers saw, per key, in real-time order.
#[derive(Default)]
struct Recorder {
    events: Mutex<BTreeMap<usize, Actions>>,
    /// Writes whose outcome is unknown (a 503, a broken connection): they may take effect at any
    /// time after their call, so their responses go to the end of the history.
    pending: Mutex<BTreeMap<usize, Vec<(usize, Op)>>>,
    next_process: AtomicUsize,
}

impl Recorder {
    fn call(&self, key: usize, process: usize, op: Op) {
        self.events
            .lock()
            .unwrap()
            .entry(key)
            .or_default()
            .push((process, Action::Call(op)));
    }
    fn response(&self, key: usize, process: usize, op: Op) {
        self.events
            .lock()
            .unwrap()
            .entry(key)
            .or_default()
            .push((process, Action::Response(op)));
    }
    /// An operation with no effect for sure (never reached a server) is taken back out.
    fn retract(&self, key: usize, process: usize) {
        let mut events = self.events.lock().unwrap();
        let list = events.entry(key).or_default();
        let at = list
            .iter()
            .rposition(|(p, a)| *p == process && matches!(a, Action::Call(_)))
            .expect("the call being retracted");
        list.remove(at);
    }
    fn indeterminate(&self, key: usize, process: usize, op: Op) {
        self.pending
            .lock()
            .unwrap()
            .entry(key)
            .or_default()
            .push((process, op));
    }
    /// A fresh process id for a worker whose last operation is still open.
    fn new_process(&self) -> usize {
        self.next_process.fetch_add(1, Ordering::SeqCst)
    }
    /// Each key's history, with the open writes closed at the end. An open write whose value
    /// no read returned is left out altogether: it either never took effect or was overwritten
    /// before anyone looked, and a history is linearizable with it exactly when it is without
    /// it. Left in, each such write could be placed anywhere, and the checker's search grows
    /// with every subset of them (a CI run once spent an hour there).
    fn histories(&self) -> BTreeMap<usize, Actions> {
        let mut out = self.events.lock().unwrap().clone();
        for (key, open) in self.pending.lock().unwrap().iter() {
            let list = out.entry(*key).or_default();
            let observed: std::collections::BTreeSet<u64> = list
                .iter()
                .filter_map(|(_, a)| match a {
                    Action::Response(Op::Read(v)) => Some(*v),
                    _ => None,
                })
                .collect();
            for (process, op) in open {
                let Op::Write(value) = *op else { continue };
                if observed.contains(&value) {
                    list.push((*process, Action::Response(*op)));
                } else {
                    list.retain(|(p, a)| {
                        !(*p == *process && matches!(a, Action::Call(Op::Write(v)) if *v == value))
                    });
                }
            }
        }
        out
    }
}

fn resource(key: usize, value: u64) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": format!("k{key}"), "namespace": "lin"},
        "spec": {"hosts": [format!("v{value}")]},
    })
}

/// One answer from the admin API.
struct Reply {
    status: u16,
    text: String,
    json: Value,
}

/// The value a read returned: `hosts[0]` is `v<value>`; absent is 0.
fn value_of(reply: &Reply) -> Option<u64> {
    match reply.status {
        404 => Some(0),
        200 => reply.json["spec"]["hosts"][0]
            .as_str()?
            .strip_prefix('v')?
            .parse()
            .ok(),
        _ => None,
    }
}

enum Outcome {
    Done(Reply),
    /// Never reached a server: no effect.
    NotSent,
    /// Sent, but the answer was lost: any effect.
    Broken,
}

/// A member's admin API: its address and the CA of its cluster (its certificate's issuer).
#[derive(Clone)]
struct Admin {
    addr: std::net::SocketAddr,
    ca: std::path::PathBuf,
}

fn admin_of(gw: &Gateway) -> Admin {
    Admin {
        addr: gw.admin,
        ca: gw.ca.clone().expect("the gateway's CA"),
    }
}

fn call(admin: &Admin, token: &str, method: &str, path: &str, body: Option<&Value>) -> Outcome {
    let auth = format!("Bearer {token}");
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let mut headers = vec![("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    match support::try_https(
        admin.addr,
        &admin.ca,
        method,
        "admin",
        path,
        &headers,
        text.as_bytes(),
    ) {
        Ok((status, _, text)) => Outcome::Done(Reply {
            status,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::NotSent,
        Err(_) => Outcome::Broken,
    }
}

/// Every member's view of the `lin` namespace: (kind, name) -> (resourceVersion, spec).
fn view(addr: &Admin, token: &str) -> Option<BTreeMap<(String, String), Value>> {
    let mut out = BTreeMap::new();
    for plural in ["virtualservices", "destinationrules"] {
        let path = format!("/v1/namespaces/lin/{plural}?consistent=true");
        let Outcome::Done(reply) = call(addr, token, "GET", &path, None) else {
            return None;
        };
        if reply.status != 200 {
            return None;
        }
        for item in reply.json["items"].as_array()? {
            let name = item["metadata"]["name"].as_str()?.to_string();
            out.insert(
                (plural.to_string(), name),
                json!([item["metadata"]["resourceVersion"], item["spec"]]),
            );
        }
    }
    Some(out)
}

const KEYS: usize = 3;
const WORKERS: usize = 5;
const FAULT_PERIOD: Duration = Duration::from_secs(20);

/// One client process: random reads (linearizable) and writes on random keys through random
/// members, until told to stop. Writes every tenth operation a resource of its own as well,
/// and records those acknowledged.
fn run_worker(
    worker: usize,
    admins: Vec<Admin>,
    token: String,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    next_value: Arc<AtomicUsize>,
    acknowledged: Arc<Mutex<Vec<String>>>,
) {
    let mut rng = rand::rng();
    let mut process = worker;
    let mut ops = 0;
    while !stop.load(Ordering::SeqCst) {
        let addr = &admins[rng.random_range(0..admins.len())];
        let key = rng.random_range(0..KEYS);
        let path = format!("/v1/namespaces/lin/virtualservices/k{key}");
        ops += 1;
        if rng.random_bool(0.5) {
            let value = next_value.fetch_add(1, Ordering::SeqCst) as u64;
            recorder.call(key, process, Op::Write(value));
            match call(addr, &token, "PUT", &path, Some(&resource(key, value))) {
                Outcome::Done(r) if matches!(r.status, 200 | 201) => {
                    recorder.response(key, process, Op::Write(value));
                }
                // Refused before anything was proposed (a member still catching up does not
                // know the token yet): no effect.
                Outcome::NotSent => recorder.retract(key, process),
                Outcome::Done(r) if r.status == 401 => recorder.retract(key, process),
                // No quorum, or the leader changed under it: it may still apply.
                Outcome::Done(r) if r.status == 503 => {
                    recorder.indeterminate(key, process, Op::Write(value));
                    process = recorder.new_process();
                }
                Outcome::Done(r) => panic!("PUT {path}: {} {}", r.status, r.text),
                Outcome::Broken => {
                    recorder.indeterminate(key, process, Op::Write(value));
                    process = recorder.new_process();
                }
            }
        } else {
            recorder.call(key, process, Op::Read(0));
            let read = format!("{path}?consistent=true");
            match call(addr, &token, "GET", &read, None) {
                Outcome::Done(r) => match value_of(&r) {
                    Some(v) => recorder.response(key, process, Op::Read(v)),
                    // A refused read says nothing about the register.
                    None => recorder.retract(key, process),
                },
                Outcome::NotSent | Outcome::Broken => recorder.retract(key, process),
            }
        }
        if ops % 10 == 0 {
            let name = format!("ack-{worker}-{ops}");
            let body = json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": name, "namespace": "lin"},
                "spec": {"host": "api"},
            });
            let path = format!("/v1/namespaces/lin/destinationrules/{name}");
            if let Outcome::Done(r) = call(addr, &token, "PUT", &path, Some(&body))
                && matches!(r.status, 200 | 201)
            {
                acknowledged.lock().unwrap().push(name);
            }
        }
    }
}

#[test]
fn writes_and_reads_under_random_faults_stay_linearizable_and_nothing_acknowledged_is_lost() {
    let net = Net::new(71);
    let (mut members, token) = form_mesh(&net);
    let admins: Vec<Admin> = members
        .iter()
        .map(|m| admin_of(m.gw.as_ref().unwrap()))
        .collect();
    let recorder = Arc::new(Recorder::default());
    recorder.next_process.store(WORKERS, Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let next_value = Arc::new(AtomicUsize::new(1));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let args = (
                admins.clone(),
                token.clone(),
                recorder.clone(),
                stop.clone(),
                next_value.clone(),
                acknowledged.clone(),
            );
            std::thread::spawn(move || {
                run_worker(worker, args.0, args.1, args.2, args.3, args.4, args.5)
            })
        })
        .collect();

    // Faults, one member at a time so that a majority stays: SIGKILL then restart on the same
    // data, or SIGSTOP then SIGCONT.
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut faults = Vec::new();
    while started.elapsed() < FAULT_PERIOD {
        std::thread::sleep(Duration::from_millis(rng.random_range(800..2000)));
        let m = &mut members[rng.random_range(0..3)];
        let outage = Duration::from_millis(rng.random_range(300..2500));
        if rng.random_bool(0.5) {
            faults.push(format!("kill -9 {} for {outage:?}", m.cluster));
            if let Some(mut gw) = m.gw.take() {
                gw.kill();
            }
            std::thread::sleep(outage);
            m.gw = Some(Spec::new(m.cluster, m.host).start(&net));
        } else {
            faults.push(format!("SIGSTOP {} for {outage:?}", m.cluster));
            let gw = m.gw.as_ref().unwrap();
            gw.signal("STOP");
            std::thread::sleep(outage);
            gw.signal("CONT");
        }
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("a worker panicked");
    }

    // Healed: every member converges on the same state, holding every acknowledged write.
    let views = eventually("identical state on every member", UP, || {
        let views: Vec<_> = admins
            .iter()
            .map(|a| view(a, &token))
            .collect::<Option<_>>()?;
        views.windows(2).all(|w| w[0] == w[1]).then_some(views)
    });
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        !acknowledged.is_empty(),
        "no write was acknowledged during {faults:?}"
    );
    for name in &acknowledged {
        assert!(
            views[0].contains_key(&("destinationrules".to_string(), name.clone())),
            "acknowledged {name} lost after {faults:?}"
        );
    }

    // The history of each key is linearizable.
    let histories = recorder.histories();
    assert_eq!(histories.len(), KEYS, "every key was used");
    let mut total = 0;
    for (key, actions) in histories {
        let calls = actions
            .iter()
            .filter(|(_, a)| matches!(a, Action::Call(_)))
            .count();
        total += calls;
        let writes = actions
            .iter()
            .filter(|(_, a)| matches!(a, Action::Response(Op::Write(_))))
            .count();
        assert!(
            calls >= 20 && writes >= 5,
            "too few operations on k{key} to judge: {calls}"
        );
        let open = recorder
            .pending
            .lock()
            .unwrap()
            .get(&key)
            .map_or(0, Vec::len);
        let checking = Instant::now();
        let kept = keep_history(key, &actions);
        assert!(
            linearizable(actions, CHECK_BUDGET).unwrap_or_else(|| panic!(
                "the checker gave up on k{key} after {CHECK_BUDGET:?} ({calls} operations, \
                 history in {kept})"
            )),
            "the history of k{key} is not linearizable (faults: {faults:?}, history in {kept})"
        );
        let _ = std::fs::remove_file(&kept);
        eprintln!(
            "k{key}: {calls} operations ({open} writes of unknown outcome), linearizable, \
             checked in {:?}",
            checking.elapsed()
        );
    }
    eprintln!(
        "{total} operations on {KEYS} keys, {} acknowledged resources, faults: {faults:?}",
        acknowledged.len()
    );
}

/// Writes a key's history to a file that outlives the test, for a post-mortem when the check
/// fails; returns its path.
fn keep_history(key: usize, actions: &Actions) -> String {
    let path = std::env::temp_dir().join(format!(
        "causeway-faults-{}-k{key}.history",
        std::process::id()
    ));
    let text: String = actions
        .iter()
        .map(|(process, action)| format!("{process} {action:?}\n"))
        .collect();
    match std::fs::write(&path, text) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("nowhere ({e})"),
    }
}

/// How long the checker may search one key's history. The search is exponential in the worst
/// case; a history that takes longer than this is reported as a failure, not waited for.
const CHECK_BUDGET: Duration = Duration::from_secs(300);

/// Whether a history is linearizable, or `None` when the checker did not decide within
/// `budget` (its thread is left behind; the test fails and the process ends with it).
fn linearizable(actions: Actions, budget: Duration) -> Option<bool> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let history = History::from_actions(actions);
        let _ = tx.send(WGLChecker::<Register>::is_linearizable(history));
    });
    rx.recv_timeout(budget).ok()
}

/// Drops every packet between one address and others (both ways) while it lives. The rules
/// carry a comment naming the test net, and are removed on drop, even when the test fails.
struct Partition {
    rules: Vec<[String; 2]>,
    comment: String,
}

impl Partition {
    fn cut(net: &Net, alone: u8, others: &[u8]) -> Self {
        let comment = format!("causeway-test-net-{}", net.net);
        let mut partition = Self {
            rules: Vec::new(),
            comment,
        };
        for other in others {
            for (src, dst) in [(alone, *other), (*other, alone)] {
                let rule = [net.ip(src), net.ip(dst)];
                partition.iptables("-I", &rule);
                partition.rules.push(rule);
            }
        }
        partition
    }

    fn iptables(&self, action: &str, [src, dst]: &[String; 2]) {
        let out = Command::new("iptables")
            .args([action, "INPUT", "-s", src, "-d", dst, "-m", "comment"])
            .args(["--comment", &self.comment, "-j", "DROP"])
            .output()
            .expect("iptables (the test needs it, and root, to cut the transport)");
        assert!(
            out.status.success(),
            "iptables {action} {src} -> {dst}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in std::mem::take(&mut self.rules) {
            self.iptables("-D", &rule);
        }
    }
}

fn status_of(addr: &Admin, token: &str) -> Option<Value> {
    match call(addr, token, "GET", "/v1/status", None) {
        Outcome::Done(r) if r.status == 200 => Some(r.json),
        _ => None,
    }
}

#[test]
fn a_minority_cut_off_at_the_transport_cannot_commit_while_the_majority_can() {
    let net = Net::new(72);
    let (members, token) = form_mesh(&net);
    let admin = |i: usize| admin_of(members[i].gw.as_ref().unwrap());
    let write = |i: usize, name: &str| {
        let body = json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "cut"},
            "spec": {"hosts": ["api"]},
        });
        let path = format!("/v1/namespaces/cut/virtualservices/{name}");
        match call(&admin(i), &token, "PUT", &path, Some(&body)) {
            Outcome::Done(r) => r.status,
            _ => 0,
        }
    };
    assert_eq!(write(0, "before"), 201);

    // Cut the leader off from the other two: its side is the minority.
    let status = status_of(&admin(0), &token).expect("status");
    let leader_id = status["leader"]["id"].as_u64().expect("a leader");
    let leader = members
        .iter()
        .position(|m| {
            let s = status_of(&admin_of(m.gw.as_ref().unwrap()), &token);
            s.is_some_and(|s| s["node"]["id"].as_u64() == Some(leader_id))
        })
        .expect("the leader is a member");
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let hosts: Vec<u8> = others.iter().map(|i| members[*i].host).collect();
    let cut = Partition::cut(&net, members[leader].host, &hosts);

    // The majority elects a new leader and commits.
    // A retry after a 503 ("may still apply") that did apply answers 200: an update.
    eventually("a write on the majority side", UP, || {
        matches!(write(others[0], "majority"), 200 | 201).then_some(())
    });
    let new_leader = status_of(&admin(others[1]), &token).expect("status")["leader"]["id"]
        .as_u64()
        .expect("a new leader");
    assert_ne!(
        new_leader, leader_id,
        "the cut-off leader still leads the majority"
    );
    // The minority cannot commit: its writes fail with 503, and change nothing anywhere.
    assert_eq!(write(leader, "minority"), 503);
    let path = "/v1/namespaces/cut/virtualservices/minority?consistent=true";
    for i in &others {
        match call(&admin(*i), &token, "GET", path, None) {
            Outcome::Done(r) => assert_eq!(r.status, 404, "{}", r.text),
            _ => panic!("the majority does not answer"),
        }
    }

    // Healed: the old leader catches up, and every member holds the same state.
    drop(cut);
    eventually("identical state after healing", UP, || {
        let views: Vec<_> = (0..3)
            .map(|i| view_cut(&admin(i), &token))
            .collect::<Option<_>>()?;
        (views.windows(2).all(|w| w[0] == w[1]) && views[0].contains("majority")).then_some(())
    });
}

/// The names and versions in namespace `cut`, read linearizably.
fn view_cut(addr: &Admin, token: &str) -> Option<String> {
    let path = "/v1/namespaces/cut/virtualservices?consistent=true";
    let Outcome::Done(r) = call(addr, token, "GET", path, None) else {
        return None;
    };
    (r.status == 200).then(|| {
        r.json["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                format!(
                    "{}@{} ",
                    i["metadata"]["name"], i["metadata"]["resourceVersion"]
                )
            })
            .collect()
    })
}

/// The checker as wired here is not a rubber stamp: a stale read after an acknowledged write,
/// or a read of a value never written, is refused.
#[test]
fn the_register_checker_refuses_stale_and_invented_reads() {
    use Action::{Call, Response};
    let good = vec![
        (0, Call(Op::Write(1))),
        (0, Response(Op::Write(1))),
        (1, Call(Op::Read(0))),
        (1, Response(Op::Read(1))),
    ];
    assert!(WGLChecker::<Register>::is_linearizable(
        History::from_actions(good)
    ));
    let stale = vec![
        (0, Call(Op::Write(1))),
        (0, Response(Op::Write(1))),
        (1, Call(Op::Read(0))),
        (1, Response(Op::Read(0))),
    ];
    assert!(!WGLChecker::<Register>::is_linearizable(
        History::from_actions(stale)
    ));
    let invented = vec![(1, Call(Op::Read(0))), (1, Response(Op::Read(7)))];
    assert!(!WGLChecker::<Register>::is_linearizable(
        History::from_actions(invented)
    ));
    // An indeterminate write (its response at the end) may explain a later read.
    let open = vec![
        (0, Call(Op::Write(5))),
        (1, Call(Op::Read(0))),
        (1, Response(Op::Read(5))),
        (0, Response(Op::Write(5))),
    ];
    assert!(WGLChecker::<Register>::is_linearizable(
        History::from_actions(open)
    ));
}

/// Open writes: one that a read saw is closed at the end of the history, one that nobody saw
/// is left out, and neither makes a stale read valid.
#[test]
fn open_writes_close_at_the_end_or_drop_out_when_nobody_saw_them() {
    let recorder = Recorder::default();
    recorder.call(0, 0, Op::Write(1));
    recorder.response(0, 0, Op::Write(1));
    recorder.call(0, 1, Op::Write(2));
    recorder.indeterminate(0, 1, Op::Write(2));
    recorder.call(0, 2, Op::Write(3));
    recorder.indeterminate(0, 2, Op::Write(3));
    recorder.call(0, 3, Op::Read(0));
    recorder.response(0, 3, Op::Read(2));
    let history = recorder.histories().remove(&0).unwrap();
    let writes = |v| {
        history
            .iter()
            .filter(|(_, a)| matches!(a, Action::Call(Op::Write(w)) | Action::Response(Op::Write(w)) if *w == v))
            .count()
    };
    assert_eq!(writes(2), 2, "the observed open write is kept, closed");
    assert_eq!(writes(3), 0, "the unobserved open write is left out");
    assert_eq!(linearizable(history, CHECK_BUDGET), Some(true));

    // Reading 1 after 2 was read: 1 was acknowledged before 2 was even sent.
    recorder.call(0, 3, Op::Read(0));
    recorder.response(0, 3, Op::Read(1));
    let history = recorder.histories().remove(&0).unwrap();
    assert_eq!(linearizable(history, CHECK_BUDGET), Some(false));
}
