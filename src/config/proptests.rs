//! Property tests of the config reader (the `cargo test` half of the fuzzing regime; the
//! libFuzzer half is `fuzz/fuzz_targets/config.rs`), seeded with the committed fuzz corpus.
//! Whatever the file says, the reader answers with a config or with errors that each name a
//! field (only a file that is not TOML at all is refused as a whole), never a panic; and the
//! effective config it logs loads back to the same config.

use std::path::Path;

use proptest::prelude::*;
use toml::{Table, Value};

use super::*;

/// `fuzz/corpus/config`, every file.
const SEEDS: &[&str] = &[
    include_str!("../../fuzz/corpus/config/empty.toml"),
    include_str!("../../fuzz/corpus/config/example.toml"),
    include_str!("../../fuzz/corpus/config/example-store.toml"),
    include_str!("../../fuzz/corpus/config/minimal.toml"),
    include_str!("../../fuzz/corpus/config/services.toml"),
    include_str!("../../fuzz/corpus/config/store-tuned.toml"),
];

fn read(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml_str(text, Path::new("/etc/causeway"), &Overrides::default())
}

/// What must hold of any file. `is_toml`: the text is known to be TOML, so every error must
/// name its field.
fn check(text: &str, is_toml: bool) {
    match read(text) {
        Ok(config) => {
            let logged = config.to_toml();
            match read(&logged) {
                Ok(again) => assert_eq!(again, config, "{logged}"),
                Err(e) => panic!("the logged config does not load: {e}\n{logged}\nfrom\n{text}"),
            }
        }
        Err(ConfigErrors { errors }) => {
            assert!(!errors.is_empty());
            for e in &errors {
                assert!(!e.message.is_empty(), "{errors:?}");
                if is_toml {
                    assert!(!e.path.is_empty(), "{errors:?}\n{text}");
                }
            }
        }
    }
}

fn toml_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::Integer),
        (-3i64..70000).prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Float),
        any::<bool>().prop_map(Value::Boolean),
        prop_oneof![
            "\\PC{0,16}",
            "[a-z0-9.-]{0,16}",
            "[0-9]{1,4}(ns|ms|s|m|h|d)",
            "(127\\.0\\.0\\.[0-9]|\\[::1\\]|0\\.0\\.0\\.0):[0-9]{1,5}",
            "spiffe://[a-z.]{1,8}/gateway/[a-z0-9-]{1,8}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,12}", inner), 0..4)
                .prop_map(|kv| Value::Table(kv.into_iter().collect())),
        ]
    })
}

/// Every path into `table`, as keys and array indexes.
fn paths(value: &Value, at: Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match value {
        Value::Table(t) => {
            for (k, v) in t {
                let mut p = at.clone();
                p.push(Step::Key(k.clone()));
                paths(v, p, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let mut p = at.clone();
                p.push(Step::Index(i));
                paths(v, p, out);
            }
        }
        _ => {}
    }
    out.push(at);
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn get_mut<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, step| match (v, step) {
        (Value::Table(t), Step::Key(k)) => t.get_mut(k),
        (Value::Array(a), Step::Index(i)) => a.get_mut(*i),
        _ => None,
    })
}

#[derive(Debug, Clone)]
enum Change {
    Replace(Value),
    Remove,
    Add(String, Value),
}

/// Keys the reader knows, so that additions also hit known fields at the wrong place.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "cluster",
            "name",
            "bind",
            "tunnel",
            "admin",
            "raft",
            "store",
            "peers",
            "services",
            "node_id",
            "voters",
            "members",
            "tls",
            "names",
            "ports",
            "endpoints",
            "port",
            "protocol",
            "export",
            "keep_alive",
            "max_streams",
            "trust_bundle",
            "address",
        ])
        .prop_map(str::to_string),
        "[a-z_]{1,10}",
    ]
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => toml_value().prop_map(Change::Replace),
        2 => Just(Change::Remove),
        2 => (key(), toml_value()).prop_map(|(k, v)| Change::Add(k, v)),
    ]
}

fn apply(root: &mut Value, pick: usize, change: Change) {
    let mut all = Vec::new();
    paths(root, Vec::new(), &mut all);
    let path = &all[pick % all.len()];
    match change {
        // The root stays a table: TOML has nothing else.
        Change::Replace(v) if !path.is_empty() => {
            if let Some(target) = get_mut(root, path) {
                *target = v;
            }
        }
        Change::Remove => {
            if let Some((last, parent)) = path.split_last() {
                match (get_mut(root, parent), last) {
                    (Some(Value::Table(t)), Step::Key(k)) => {
                        t.remove(k);
                    }
                    (Some(Value::Array(a)), Step::Index(i)) => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
        }
        Change::Add(k, v) => {
            if let Some(Value::Table(t)) = get_mut(root, path) {
                t.insert(k, v);
            }
        }
        Change::Replace(_) => {}
    }
}

fn mutate_text(text: &str, edits: &[(usize, u8, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(at, how, c) in edits {
        let n = chars.len();
        match how % 3 {
            0 if n > 0 => chars[at % n] = c,
            1 => chars.insert(at % (n + 1), c),
            _ if n > 0 => {
                chars.remove(at % n);
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_is_read_or_refused(text in prop_oneof![
        "\\PC{0,200}",
        "([a-z_\\[\\]]{1,10} ?= ?(\"[a-z0-9.:]{0,10}\"|[0-9]{1,6}|true|\\[\\])\n){0,8}",
        any::<String>(),
    ]) {
        check(&text, false);
    }

    #[test]
    fn mutated_seed_text_is_read_or_refused(
        seed in 0..SEEDS.len(),
        edits in prop::collection::vec(
            (any::<usize>(), any::<u8>(), prop_oneof![
                prop::sample::select("[]=\"'.,{}#\n 0123456789sm".chars().collect::<Vec<_>>()),
                prop::char::any(),
            ]),
            1..6,
        ),
    ) {
        check(&mutate_text(SEEDS[seed], &edits), false);
    }

    #[test]
    fn mutated_seed_tables_are_read_or_refused_by_field(
        seed in 0..SEEDS.len(),
        changes in prop::collection::vec((any::<usize>(), change()), 1..4),
    ) {
        let table: Table = SEEDS[seed].parse().expect("seeds are TOML");
        let mut root = Value::Table(table);
        for (pick, change) in changes {
            apply(&mut root, pick, change);
        }
        if let Ok(text) = toml::to_string(&root) {
            check(&text, true);
        }
    }
}

#[test]
fn every_seed_is_read_and_logs_back_to_itself() {
    for seed in SEEDS {
        let config = read(seed).unwrap_or_else(|e| panic!("{e}\n{seed}"));
        assert_eq!(read(&config.to_toml()).unwrap(), config);
    }
}
