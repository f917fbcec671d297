//! `causeway status`: the answering gateway's view of the Raft group and its tunnels, or the raw
//! `/v1/status` JSON with `-o json`.

use serde_json::Value;

use super::context::ConnectionArgs;
use super::get::{to_json, to_yaml};
use super::table::Table;
use super::{Outcome, connect};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the server's answer as JSON or YAML instead of a summary.
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Json,
    Yaml,
}

pub async fn run(args: StatusArgs, env: &dyn Fn(&str) -> Option<String>) -> Outcome {
    let client = connect(&args.connection, env)?;
    let status = client.status().await?;
    match args.output {
        Some(Output::Json) => println!("{}", to_json(&status)),
        Some(Output::Yaml) => print!("{}", to_yaml(&status)?),
        None => print!("{}", summary(&status)),
    }
    Ok(())
}

/// The human summary. Reads the JSON leniently: a field the server leaves out shows as empty
/// rather than failing the whole command.
fn summary(status: &Value) -> String {
    let node = &status["node"];
    let leader = &status["leader"];
    let leader_text = if leader.is_null() {
        "none (no leader elected, or not known yet)".to_string()
    } else {
        let mut s = who(leader);
        if let Some(admin) = leader["admin"].as_str() {
            s.push_str(&format!(", admin {admin}"));
        }
        s
    };
    let lines = [
        (
            "Node",
            format!("{} in cluster {}", who(node), text(&node["cluster"])),
        ),
        ("SPIFFE ID", text(&node["spiffeId"])),
        ("Admin", text(&node["admin"])),
        ("Role", text(&status["role"])),
        ("Leader", leader_text),
        ("Term", text(&status["term"])),
        (
            "Commit",
            format!(
                "{} (applied {})",
                text(&status["commitIndex"]),
                text(&status["appliedIndex"])
            ),
        ),
    ];
    let mut out = String::new();
    for (label, value) in lines {
        out.push_str(&format!("{:<11}{value}\n", format!("{label}:")));
    }

    let members = array(&status["members"]);
    out.push_str(&format!("\nMembers ({}):\n", members.len()));
    let mut table = Table::new([
        "ID", "NAME", "CLUSTER", "ROLE", "RAFT", "ADMIN", "MATCH", "LAG",
    ]);
    for m in members {
        let mut role = text(&m["role"]);
        if !leader.is_null() && m["id"] == leader["id"] {
            role.push_str(" (leader)");
        }
        table.row(vec![
            text(&m["id"]),
            text(&m["name"]),
            text(&m["cluster"]),
            role,
            text(&m["raft"]),
            text(&m["admin"]),
            text(&m["matchIndex"]),
            text(&m["lag"]),
        ]);
    }
    out.push_str(&indent(&table.render()));

    let tunnels = array(&status["tunnels"]);
    out.push_str(&format!("\nTunnels ({}):\n", tunnels.len()));
    if !tunnels.is_empty() {
        let mut table = Table::new(["CLUSTER", "ADDRESS", "STATE"]);
        for t in tunnels {
            table.row(vec![
                text(&t["cluster"]),
                text(&t["address"]),
                text(&t["state"]),
            ]);
        }
        out.push_str(&indent(&table.render()));
    }
    out
}

/// `name (id N)`, or just the id.
fn who(v: &Value) -> String {
    match v["name"].as_str() {
        Some(name) => format!("{name} (id {})", text(&v["id"])),
        None => format!("id {}", text(&v["id"])),
    }
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cli_status_summary_shows_members_and_tunnels() {
        let status = json!({
            "node": {"id": 1, "name": "gw", "cluster": "east", "spiffeId": "spiffe://east.local/gateway/gw", "admin": "127.0.0.1:15000"},
            "role": "leader", "leader": {"id": 1, "name": "gw", "admin": "127.0.0.1:15000"},
            "term": 3, "commitIndex": 42, "appliedIndex": 41,
            "members": [
                {"id": 1, "name": "gw", "cluster": "east", "role": "voter", "raft": "127.0.0.1:15012", "admin": "127.0.0.1:15000", "matchIndex": 42, "lag": 0},
                {"id": 2, "name": "gw", "cluster": "west", "role": "learner", "raft": "127.0.0.2:15012", "admin": "127.0.0.2:15000"}
            ],
            "tunnels": [{"cluster": "west", "address": "127.0.0.2:15443", "state": "up"}]
        });
        let text = summary(&status);
        assert!(
            text.starts_with("Node:      gw (id 1) in cluster east\n"),
            "{text}"
        );
        assert!(
            text.contains("Leader:    gw (id 1), admin 127.0.0.1:15000\n"),
            "{text}"
        );
        assert!(text.contains("Commit:    42 (applied 41)\n"), "{text}");
        assert!(
            text.contains("\n  1    gw     east      voter (leader)   127.0.0.1:15012"),
            "{text}"
        );
        assert!(
            text.contains("learner          127.0.0.2:15012   127.0.0.2:15000   <none>   <none>\n"),
            "{text}"
        );
        assert!(text.contains("Tunnels (1):\n  CLUSTER   ADDRESS           STATE\n  west      127.0.0.2:15443   up\n"), "{text}");

        let follower = json!({"role": "follower", "leader": null, "members": [], "tunnels": []});
        let text = summary(&follower);
        assert!(text.contains("Leader:    none"), "{text}");
        assert!(text.contains("Tunnels (0):\n"), "{text}");
    }
}
