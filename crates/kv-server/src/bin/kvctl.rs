//! `kvctl`: talk to a kv node.
//!
//! ```text
//! kvctl --node 127.0.0.1:7001 put <key> <value> [--context <hex>]
//! kvctl --node 127.0.0.1:7001 get <key>
//! kvctl --node 127.0.0.1:7001 delete <key> --context <hex>
//! kvctl --node 127.0.0.1:7001 watch --prefix user/ [--count N] [--for SECS]
//! kvctl --node 127.0.0.1:7001 status | ring [--ranges] | hints
//! kvctl --node 127.0.0.1:7004 join     # make this node an owner
//! kvctl --node 127.0.0.1:7004 leave    # hand its ranges away and stop it
//! kvctl --certs-dir DIR certs init|node|client ...   # a cluster CA and certificates
//! kvctl --certs-dir DIR token new --name NAME --role read|write|admin
//! ```
//! A secured cluster: `--certs-dir DIR` (or `KV_CERTS_DIR`) names the
//! directory with the cluster CA (`ca.pem`) and, when present, the admin
//! token (`admin.token`); `--token` (or `KV_TOKEN`) gives another token.
//! A put without a context on an existing key makes a concurrent sibling
//! (as in Riak); send the context of a read to supersede what it saw.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kv_core::{NodeId, Partitioner as _};
use kv_server::client::{Client, ClientConfig, ClientError, Context};
use kv_server::endpoint::{ConnectSettings, admin_client};
use kv_server::proto::{
    ChangeReply, Empty, HintsReply, RemoveRequest, RepairProgress, RepairRequest, SnapshotRequest,
    StatusReply,
};
use kv_server::security::certs::CertsDir;
use kv_server::security::{ClientCredentials, Role, TokenEntry, hash_token};
use tonic::service::interceptor::InterceptedService;

#[derive(Debug, Parser)]
#[command(name = "kvctl", about = "Talk to a kv node")]
struct Args {
    /// The node to talk to.
    #[arg(long, default_value = "127.0.0.1:7001")]
    node: String,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Certificates directory: the cluster CA (ca.pem) turns TLS on, and
    /// admin.token, when present, is the token sent.
    #[arg(long, global = true, env = "KV_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// Token to send (wins over admin.token).
    #[arg(long, global = true, env = "KV_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Present the client certificate client-NAME.pem of the certificates directory.
    #[arg(long, global = true)]
    client_cert: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create the cluster CA in the certificates directory.
    Init {
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u64,
    },
    /// Issue a node's certificate (node-ID.pem and .key).
    Node {
        /// The node's id.
        #[arg(long)]
        id: u64,
        /// Other names or addresses the certificate is valid for (repeat).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// Issue a client certificate (client-NAME.pem and .key) with a role.
    Client {
        /// Who holds it.
        #[arg(long)]
        name: String,
        /// read, write or admin.
        #[arg(long)]
        role: Role,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token: its hash goes to tokens.toml (restart the nodes to
    /// load it), the token is printed once.
    New {
        /// Who holds it.
        #[arg(long)]
        name: String,
        /// read, write or admin.
        #[arg(long)]
        role: Role,
    },
    /// Print the tokens.toml entry of a token read from stdin.
    Hash {
        /// Who holds it.
        #[arg(long)]
        name: String,
        /// read, write or admin.
        #[arg(long)]
        role: Role,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a value.
    Put {
        key: String,
        value: String,
        /// Context from a previous get (hex); none makes a sibling of what exists.
        #[arg(long, default_value = "")]
        context: String,
        /// Write quorum for this request.
        #[arg(long)]
        w: Option<u32>,
        /// Create only: refused if the key holds a value.
        #[arg(long, conflicts_with_all = ["if_not_modified", "context"])]
        if_none_match: bool,
        /// Refused if the key was written since the read --context came
        /// from.
        #[arg(long, requires = "context")]
        if_not_modified: bool,
        /// Time to live in seconds: the value lapses then, on every
        /// replica.
        #[arg(long, conflicts_with_all = ["if_none_match", "if_not_modified"])]
        ttl: Option<u64>,
    },
    /// Read a key: its value or every sibling, and the context.
    Get {
        key: String,
        /// Read quorum for this request.
        #[arg(long)]
        r: Option<u32>,
    },
    /// Read many keys in one go: a line per key, in order (exits non-zero
    /// if any read failed; the others are still printed).
    Mget {
        #[arg(required = true)]
        keys: Vec<String>,
        /// Read quorum for each read.
        #[arg(long)]
        r: Option<u32>,
    },
    /// Write many KEY=VALUE pairs in one go, each a blind write (it
    /// supersedes nothing: an existing value stays as a sibling); a line
    /// per item, in order (exits non-zero if any write failed).
    Mput {
        #[arg(required = true, value_name = "KEY=VALUE")]
        items: Vec<String>,
        /// Write quorum for each write.
        #[arg(long)]
        w: Option<u32>,
    },
    /// List keys in key order (every node is asked for each page of
    /// 1,000: docs/api.md, "Key listing"); one key per line, and on
    /// standard error where to continue when keys remain.
    List {
        /// Keys that start with this (all keys when empty).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Continue after this key (as a listing that stopped says).
        #[arg(long)]
        after: Option<String>,
        /// Most keys to list; 0 for every one.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Stop before this key (with --after, a range of keys).
        #[arg(long, conflicts_with = "prefix")]
        end: Option<String>,
    },
    /// Watch the keys with a prefix (or one key) and print their changes
    /// as they come: a line per change, `KEY<TAB>VALUE` (siblings joined
    /// with ` | `, `(deleted)` for a delete, ` (resync)` after a resent
    /// state). On exit, standard error says the cursor to resume from.
    Watch {
        /// Keys that start with this (all keys when empty).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only this key.
        #[arg(long, conflicts_with = "prefix")]
        key: Option<String>,
        /// Resume after what an earlier watch printed (its cursor, hex).
        #[arg(long)]
        cursor: Option<String>,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this many seconds.
        #[arg(long = "for", value_name = "SECS")]
        for_secs: Option<u64>,
    },
    /// Delete a key (send the context of a read).
    Delete {
        key: String,
        #[arg(long, default_value = "")]
        context: String,
        #[arg(long)]
        w: Option<u32>,
        /// Refused if the key was written since the read --context came
        /// from.
        #[arg(long, requires = "context")]
        if_not_modified: bool,
    },
    /// Members with their state, zone and share of the data.
    Status,
    /// Ring ownership: tokens and shares per node.
    Ring {
        /// Also list every token range with its replicas.
        #[arg(long)]
        ranges: bool,
    },
    /// Hints the node holds for other nodes.
    Hints,
    /// Make the node an owner: it streams its ranges, then takes them.
    Join,
    /// Hand the node's ranges to the others; the node then stops.
    Leave,
    /// Take a node that is gone for good out of the ring (run on any
    /// other node): its ranges are copied from the surviving replicas to
    /// their new owners first. A running node leaves instead.
    Remove {
        /// The dead node's id.
        id: u64,
    },
    /// Make a consistent point-in-time copy of the node's data directory
    /// without stopping it (starting kvd on the copy restores the node).
    Snapshot {
        /// Where: an absolute path on the node's machine, new or empty.
        dir: String,
    },
    /// Repair the node now: anti-entropy with every peer it shares keys
    /// with (both directions), with progress on stderr.
    Repair {
        /// Only this peer.
        #[arg(long)]
        peer: Option<u64>,
    },
    /// Make the cluster CA and certificates (no node is contacted).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Make tokens (no node is contacted).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// Renders the outcome of a write.
fn written(json: bool, what: &str, context: &Context) -> String {
    if json {
        format!(
            "{}\n",
            serde_json::json!({ "ok": true, "context": context.to_hex() })
        )
    } else {
        format!("{what}\ncontext: {}\n", context.to_hex())
    }
}

fn fail(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// What this invocation presents to the node.
fn credentials(args: &Args) -> Result<ClientCredentials, String> {
    match &args.certs_dir {
        Some(dir) => {
            ClientCredentials::from_dir(dir, args.client_cert.as_deref(), args.token.clone())
                .map_err(|e| format!("{e} (--certs-dir / KV_CERTS_DIR)"))
        }
        None if args.client_cert.is_some() => {
            Err("--client-cert needs --certs-dir (or KV_CERTS_DIR)".into())
        }
        None => Ok(ClientCredentials {
            token: args.token.clone(),
            ..ClientCredentials::default()
        }),
    }
}

/// Certificates and tokens, made locally.
fn local(dir: Option<&std::path::Path>, command: Command) -> Result<String, String> {
    let dir = CertsDir(
        dir.ok_or("give the certificates directory: --certs-dir DIR (or KV_CERTS_DIR)")?
            .to_path_buf(),
    );
    let e = |e: kv_server::security::SecurityError| e.to_string();
    Ok(match command {
        Command::Certs { command } => match command {
            CertsCommand::Init { days } => {
                dir.init(days).map_err(e)?;
                format!(
                    "cluster CA made: {} (give to every node and client) and {} (keep it where certificates are issued; nodes do not need it)\n",
                    dir.ca_cert().display(),
                    dir.ca_key().display()
                )
            }
            CertsCommand::Node { id, hosts, days } => {
                let (cert, key) = dir.issue_node(NodeId(id), &hosts, days).map_err(e)?;
                format!(
                    "node {id}: {} and {}\nstart it with: kvd --node-id {id} --certs-dir {} ...\n",
                    cert.display(),
                    key.display(),
                    dir.0.display()
                )
            }
            CertsCommand::Client { name, role, days } => {
                let (cert, key) = dir.issue_client(&name, role, days).map_err(e)?;
                format!(
                    "client {name} ({role}): {} and {}\nuse it with: kvctl --certs-dir {} --client-cert {name} ...\n",
                    cert.display(),
                    key.display(),
                    dir.0.display()
                )
            }
        },
        Command::Token { command } => match command {
            TokenCommand::New { name, role } => {
                let token = dir.add_token(&name, role).map_err(e)?;
                format!(
                    "{token}\n(the token of {name}, role {role}: shown once; its hash is in {}; restart the nodes to load it)\n",
                    dir.tokens().display()
                )
            }
            TokenCommand::Hash { name, role } => {
                let mut token = String::new();
                std::io::stdin()
                    .read_line(&mut token)
                    .map_err(|e| format!("reading the token from stdin: {e}"))?;
                TokenEntry {
                    name,
                    role: role.to_string(),
                    sha256: hash_token(token.trim()),
                }
                .to_toml()
            }
        },
        _ => return Err("not a local command".into()),
    })
}

/// Runs an operator command.
async fn admin(
    node: &str,
    json: bool,
    credentials: &ClientCredentials,
    command: Command,
) -> Result<String, String> {
    let settings = match command {
        // A repair takes as long as the data it moves; progress shows it
        // is alive.
        Command::Repair { .. } => ConnectSettings {
            request_timeout: None,
            ..ConnectSettings::operator()
        },
        _ => ConnectSettings::operator(),
    };
    let endpoint = credentials.endpoint(node, &settings)?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach {node}: {e}"))?;
    let mut client = admin_client(InterceptedService::new(channel, credentials.bearer()?));
    let out = match command {
        Command::Status => {
            let s = client.status(Empty {}).await.map_err(fail)?.into_inner();
            render_status(json, &s)
        }
        Command::Ring { ranges } => {
            let s = client.status(Empty {}).await.map_err(fail)?.into_inner();
            render_ring(node, json, ranges, s)?
        }
        Command::Hints => {
            let h = client.hints(Empty {}).await.map_err(fail)?.into_inner();
            render_hints(json, &h)
        }
        Command::Join => {
            let r = client.join(Empty {}).await.map_err(fail)?.into_inner();
            changed(json, node, "joined", &r)
        }
        Command::Leave => {
            let r = client.leave(Empty {}).await.map_err(fail)?.into_inner();
            changed(json, node, "left", &r)
        }
        Command::Remove { id } => {
            let r = client
                .remove(RemoveRequest { node: id })
                .await
                .map_err(fail)?
                .into_inner();
            changed(json, &format!("n{id}"), "removed", &r)
        }
        Command::Snapshot { dir } => {
            let r = client
                .snapshot(SnapshotRequest { dir })
                .await
                .map_err(fail)?
                .into_inner();
            if json {
                format!(
                    "{}\n",
                    serde_json::json!({
                        "ok": true, "dir": r.dir, "tables": r.tables, "linked": r.linked,
                        "table_bytes": r.table_bytes, "log_bytes": r.log_bytes,
                        "ring_epoch": r.ring_epoch,
                    })
                )
            } else {
                format!(
                    "{node}: snapshot in {} ({} tables, {} hard-linked, {} table bytes, {} log bytes, ring epoch {})\nrestore: kvd --data-dir {} (same node id)\n",
                    r.dir, r.tables, r.linked, r.table_bytes, r.log_bytes, r.ring_epoch, r.dir
                )
            }
        }
        Command::Repair { peer } => {
            let request = RepairRequest {
                peer: peer.unwrap_or(0),
            };
            let stream = client.repair(request).await.map_err(fail)?.into_inner();
            repair(node, json, stream).await?
        }
        Command::Put { .. }
        | Command::Get { .. }
        | Command::Mget { .. }
        | Command::Mput { .. }
        | Command::List { .. }
        | Command::Watch { .. }
        | Command::Delete { .. }
        | Command::Certs { .. }
        | Command::Token { .. } => {
            return Err("not an operator command".into());
        }
    };
    Ok(out)
}

/// `kvctl watch`: prints changes as they come, until `count` changes,
/// `until`, or Ctrl-C; then the cursor to resume from, on standard error.
async fn watch(
    mut watcher: kv_server::client::Watcher,
    json: bool,
    count: Option<usize>,
    until: Option<tokio::time::Instant>,
) -> Result<String, String> {
    eprintln!(
        "watching from cursor {}",
        kv_server::client::hex(watcher.cursor())
    );
    let mut printed = 0;
    let mut stdout = std::io::stdout();
    let outcome = loop {
        if count.is_some_and(|c| printed >= c) {
            break Ok(());
        }
        let deadline = async {
            match until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let changes = tokio::select! {
            changes = watcher.next() => changes,
            () = deadline => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
        };
        let changes = match changes {
            Ok(changes) => changes,
            Err(e) => break Err(e.to_string()),
        };
        for change in changes {
            let key = String::from_utf8_lossy(&change.key).into_owned();
            let values: Vec<String> = change
                .values
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            let line = if json {
                serde_json::json!({
                    "key": key,
                    "values": values,
                    "context": change.context.to_hex(),
                    "resync": change.resync,
                })
                .to_string()
            } else {
                let shown = match values.len() {
                    0 => "(deleted)".to_string(),
                    _ => values.join(" | "),
                };
                let resync = if change.resync { " (resync)" } else { "" };
                format!("{key}\t{shown}{resync}")
            };
            let _ = writeln!(stdout, "{line}");
            printed += 1;
        }
        let _ = stdout.flush();
    };
    eprintln!(
        "{printed} changes; resume with --cursor {}",
        kv_server::client::hex(watcher.cursor())
    );
    outcome.map(|()| String::new())
}

/// `kvctl status`: the members as one node sees them.
fn render_status(json: bool, s: &StatusReply) -> String {
    let mut out = String::new();
    if json {
        let members: Vec<_> = s
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id, "addr": m.addr, "state": m.state, "zone": m.zone,
                    "owned": m.owned, "in_ring": m.in_ring, "unhealthy": m.unhealthy,
                    "wire_version": m.wire_version, "format_version": m.format_version,
                })
            })
            .collect();
        let json = serde_json::json!({
            "node": s.node, "ring_epoch": s.ring_epoch, "n": s.n, "members": members,
            "tls": s.tls, "authenticates": s.authenticates, "insecure": s.insecure,
        });
        let _ = writeln!(out, "{json}");
    } else {
        let _ = writeln!(
            out,
            "node {} sees ring epoch {}, N={}; {}",
            s.node,
            s.ring_epoch,
            s.n,
            match (s.insecure, s.tls, s.authenticates) {
                (true, _, _) => "INSECURE (--insecure: no TLS, no authentication)",
                (false, true, _) => "TLS, clients authenticated",
                (false, false, true) => "no TLS (loopback), clients authenticated",
                (false, false, false) => "no TLS, no authentication (loopback)",
            }
        );
        let owner = s.members.iter().any(|m| m.id == s.node && m.in_ring);
        if !owner && s.members.iter().any(|m| m.in_ring) {
            let warning = kv_server::cluster::outside_ring_warning(s.node, s.ring_epoch);
            let _ = writeln!(out, "WARNING: {warning}");
        }
        let _ = writeln!(
            out,
            "{:>6}  {:<22} {:<8} {:<8} {:>8}  {:<9} {:<9} ring",
            "node", "address", "state", "zone", "owned", "storage", "versions"
        );
        for m in &s.members {
            let _ = writeln!(
                out,
                "{:>6}  {:<22} {:<8} {:<8} {:>7.1}%  {:<9} {:<9} {}",
                m.id,
                m.addr,
                m.state,
                m.zone.as_deref().unwrap_or("-"),
                m.owned * 100.0,
                if m.unhealthy { "FAILING" } else { "ok" },
                if m.wire_version == 0 {
                    "?".to_string()
                } else {
                    format!("w{} f{}", m.wire_version, m.format_version)
                },
                if m.in_ring { "owner" } else { "-" }
            );
        }
    }
    out
}

/// `kvctl ring`: members, shares, and with `ranges` every range's replicas.
fn render_ring(node: &str, json: bool, ranges: bool, s: StatusReply) -> Result<String, String> {
    let mut out = String::new();
    let state = s.ring.unwrap_or_default();
    if state.members.is_empty() {
        return Err(format!("{node} knows no ring yet"));
    }
    let ring = kv_server::ring_state::ring_of(&state).map_err(|e| e.to_string())?;
    let primary = ring.ownership();
    let replicated = ring
        .replicated_ownership(s.n as usize)
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for m in &state.members {
        let id = NodeId(m.id);
        rows.push(serde_json::json!({
            "id": m.id, "addr": m.addr, "tokens": m.tokens.len(), "weight": m.weight,
            "primary": primary.get(&id).copied().unwrap_or(0.0),
            "replicated": replicated.get(&id).copied().unwrap_or(0.0),
        }));
    }
    let mut listed = Vec::new();
    if ranges {
        for (token, _) in ring.token_owners() {
            let replicas = ring
                .preference_list_for_token(token, s.n as usize)
                .map_err(|e| e.to_string())?;
            listed.push((token, replicas));
        }
    }
    if json {
        let ranges: Vec<_> = listed
            .iter()
            .map(|(t, r)| {
                serde_json::json!({
                    "end": t.0, "replicas": r.iter().map(|n| n.0).collect::<Vec<_>>()
                })
            })
            .collect();
        let json = serde_json::json!({
            "epoch": state.epoch, "vnodes": state.vnodes, "n": s.n,
            "members": rows, "ranges": ranges,
        });
        let _ = writeln!(out, "{json}");
    } else {
        let _ = writeln!(
            out,
            "ring epoch {}, {} tokens, N={}",
            state.epoch,
            ring.token_count(),
            s.n
        );
        let _ = writeln!(
            out,
            "{:>6}  {:<22} {:>7} {:>9} {:>11}",
            "node", "address", "tokens", "primary", "replicated"
        );
        for m in &state.members {
            let id = NodeId(m.id);
            let _ = writeln!(
                out,
                "{:>6}  {:<22} {:>7} {:>8.2}% {:>10.2}%",
                m.id,
                m.addr,
                m.tokens.len(),
                primary.get(&id).copied().unwrap_or(0.0) * 100.0,
                replicated.get(&id).copied().unwrap_or(0.0) * 100.0,
            );
        }
        if ranges {
            let _ = writeln!(out, "ranges (each ends at its token):");
            for (token, replicas) in &listed {
                let names: Vec<String> = replicas.iter().map(ToString::to_string).collect();
                let _ = writeln!(out, "  {:#018x}  {}", token.0, names.join(" "));
            }
        }
    }
    Ok(out)
}

/// `kvctl hints`: hints pending per target.
fn render_hints(json: bool, h: &HintsReply) -> String {
    let mut out = String::new();
    if json {
        let owners: Vec<_> = h
            .owners
            .iter()
            .map(|o| serde_json::json!({ "owner": o.owner, "pending": o.pending }))
            .collect();
        let json = serde_json::json!({
            "owners": owners, "stored": h.stored, "delivered": h.delivered,
        });
        let _ = writeln!(out, "{json}");
    } else {
        let pending: u64 = h.owners.iter().map(|o| o.pending).sum();
        let _ = writeln!(
            out,
            "{pending} hints pending ({} stored, {} delivered since start)",
            h.stored, h.delivered
        );
        for o in &h.owners {
            let _ = writeln!(out, "  for node {}: {}", o.owner, o.pending);
        }
    }
    out
}

fn changed(json: bool, node: &str, what: &str, r: &ChangeReply) -> String {
    if json {
        format!(
            "{}\n",
            serde_json::json!({
                "ok": true, "epoch": r.epoch, "ranges": r.ranges, "keys_streamed": r.keys_streamed,
            })
        )
    } else {
        format!(
            "{node} {what}: ring epoch {}, {} ranges moved, {} key states streamed\n",
            r.epoch, r.ranges, r.keys_streamed
        )
    }
}

/// `kvctl repair`: shows progress on stderr as it arrives (one line
/// rewritten in place on a terminal, a line every few seconds otherwise)
/// and returns one line per peer.
async fn repair(
    node: &str,
    json: bool,
    mut stream: tonic::Streaming<RepairProgress>,
) -> Result<String, String> {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut shown = started;
    let mut out = String::new();
    let mut failed = 0;
    while let Some(p) = stream.message().await.map_err(fail)? {
        let line = format!(
            "[{}] peer {} ({}/{}): {} buckets differ, {} keys pulled ({} changed here), {} pushed, {:.0} keys/s",
            bar(p.peers_done, p.peers_total, p.peer_done),
            p.peer,
            p.peers_done + 1,
            p.peers_total,
            p.buckets,
            p.keys_pulled,
            p.keys_changed,
            p.keys_pushed,
            (p.keys_pulled + p.keys_pushed) as f64 / started.elapsed().as_secs_f64().max(1e-3),
        );
        if !json && (p.peer_done || terminal || shown.elapsed().as_secs() >= 5) {
            shown = std::time::Instant::now();
            let mut err = std::io::stderr();
            let _ = if terminal {
                write!(err, "\r\x1b[2K{line}")
            } else {
                writeln!(err, "{line}")
            };
            let _ = err.flush();
        }
        if !p.peer_done {
            continue;
        }
        if terminal && !json {
            eprintln!();
        }
        failed += usize::from(!p.error.is_empty());
        if json {
            let _ = writeln!(
                out,
                "{}",
                serde_json::json!({
                    "peer": p.peer, "ok": p.error.is_empty(), "error": p.error,
                    "buckets": p.buckets, "keys_pulled": p.keys_pulled,
                    "keys_changed": p.keys_changed, "keys_pushed": p.keys_pushed,
                })
            );
        } else if p.error.is_empty() {
            let _ = writeln!(
                out,
                "peer {}: repaired ({} buckets differed, {} keys changed here, {} pushed)",
                p.peer, p.buckets, p.keys_changed, p.keys_pushed
            );
        } else {
            let _ = writeln!(out, "peer {}: FAILED: {}", p.peer, p.error);
        }
    }
    if failed > 0 {
        return Err(format!(
            "{out}repair of {node}: {failed} peer exchange(s) failed; run it again once they are reachable"
        ));
    }
    Ok(out)
}

/// A progress bar over peers, the current one half done.
fn bar(done: u32, total: u32, peer_done: bool) -> String {
    const WIDTH: u32 = 20;
    let halves = 2 * done + if peer_done { 2 } else { 1 };
    let filled = (halves * WIDTH / (2 * total.max(1))).min(WIDTH) as usize;
    format!(
        "{}{}",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled)
    )
}

/// Runs one command and returns what it prints; a failure that looks like
/// missing credentials says which.
async fn run(args: Args) -> Result<String, String> {
    let plaintext = args.certs_dir.is_none();
    let no_token = args.token.is_none();
    run_command(args).await.map_err(|message| {
        if plaintext && (message.contains("transport error") || message.contains("connection")) {
            format!("{message}\n(if the node speaks TLS: --certs-dir DIR or KV_CERTS_DIR with its CA, ca.pem)")
        } else if message.contains("Unauthenticated") && no_token {
            format!("{message}\n(a token: --token or KV_TOKEN, or admin.token in the certificates directory)")
        } else {
            message
        }
    })
}

async fn run_command(args: Args) -> Result<String, String> {
    if matches!(args.command, Command::Certs { .. } | Command::Token { .. }) {
        return local(args.certs_dir.as_deref(), args.command);
    }
    let credentials = credentials(&args)?;
    if !matches!(
        args.command,
        Command::Put { .. }
            | Command::Get { .. }
            | Command::Mget { .. }
            | Command::Mput { .. }
            | Command::List { .. }
            | Command::Watch { .. }
            | Command::Delete { .. }
    ) {
        return admin(&args.node, args.json, &credentials, args.command).await;
    }
    let config = ClientConfig {
        attempts: 1,
        route_by_key: false,
        credentials: credentials.clone(),
        ..ClientConfig::default()
    };
    let client = Client::new([&args.node], config).map_err(|e| e.to_string())?;
    // A refused conditional write also says the key's current context.
    let fail = |e: ClientError| match &e {
        ClientError::PreconditionFailed { context, .. } => {
            format!("{e}\ncurrent context: {}", context.to_hex())
        }
        _ => e.to_string(),
    };
    let output = match args.command {
        Command::Put {
            key,
            value,
            context,
            w,
            if_none_match,
            if_not_modified,
            ttl,
        } => {
            let context = Context::from_hex(&context).map_err(fail)?;
            let client = client.with_quorums(w, None);
            let (key, value) = (key.as_bytes(), value.into_bytes());
            let result = if let Some(ttl) = ttl {
                let ttl = std::time::Duration::from_secs(ttl);
                client.put_with_ttl(key, value, Some(&context), ttl).await
            } else if if_none_match {
                client.put_if_absent(key, value).await
            } else if if_not_modified {
                client.put_if_unchanged(key, value, &context).await
            } else {
                client.put(key, value, Some(&context)).await
            };
            written(args.json, "ok", &result.map_err(fail)?.context)
        }
        Command::Delete {
            key,
            context,
            w,
            if_not_modified,
        } => {
            let context = Context::from_hex(&context).map_err(fail)?;
            let client = client.with_quorums(w, None);
            let result = if if_not_modified {
                client.delete_if_unchanged(key.as_bytes(), &context).await
            } else {
                client.delete(key.as_bytes(), &context).await
            };
            written(args.json, "deleted", &result.map_err(fail)?.context)
        }
        Command::Get { key, r } => {
            let client = client.with_quorums(None, r);
            let reply = client.get(key.as_bytes()).await.map_err(fail)?;
            let values: Vec<String> = reply
                .values
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            let mut out = String::new();
            if args.json {
                let json =
                    serde_json::json!({ "values": values, "context": reply.context.to_hex() });
                let _ = writeln!(out, "{json}");
            } else {
                match values.len() {
                    0 => out.push_str("(not found)\n"),
                    1 => {
                        let _ = writeln!(out, "{}", values[0]);
                    }
                    n => {
                        let _ = writeln!(out, "{n} siblings:");
                        for (i, v) in values.iter().enumerate() {
                            let _ = writeln!(out, "  {}: {v}", i + 1);
                        }
                    }
                }
                let _ = writeln!(out, "context: {}", reply.context.to_hex());
            }
            out
        }
        Command::List {
            prefix,
            after,
            limit,
            end,
        } => {
            let after = after.as_deref().map(str::as_bytes);
            let list = match end {
                Some(end) => client.list_range(after, Some(end.as_bytes()), limit).await,
                None => client.list(prefix.as_bytes(), after, limit).await,
            }
            .map_err(fail)?;
            let text = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
            let keys: Vec<String> = list.keys.iter().map(|k| text(k)).collect();
            let next = list.next.as_deref().map(text);
            let mut out = String::new();
            if args.json {
                let _ = writeln!(out, "{}", serde_json::json!({ "keys": keys, "next": next }));
            } else {
                for key in &keys {
                    let _ = writeln!(out, "{key}");
                }
                if let Some(next) = &next {
                    eprintln!(
                        "{} keys listed; more follow: continue with --after {next:?}",
                        keys.len()
                    );
                }
            }
            out
        }
        Command::Watch {
            prefix,
            key,
            cursor,
            count,
            for_secs,
        } => {
            let cursor = kv_server::client::unhex(cursor.as_deref().unwrap_or_default())
                .map_err(|e| format!("--cursor: {e}"))?;
            let (watched, exact) = match &key {
                Some(key) => (key.as_bytes(), true),
                None => (prefix.as_bytes(), false),
            };
            let watcher = client
                .watch_from(watched, exact, &cursor)
                .await
                .map_err(fail)?;
            let until =
                for_secs.map(|s| tokio::time::Instant::now() + std::time::Duration::from_secs(s));
            watch(watcher, args.json, count, until).await?
        }
        Command::Mget { keys, r } => {
            let client = client.with_quorums(None, r);
            let results = client.get_many(&keys).await;
            return many(args.json, &keys, results, |read| {
                let values: Vec<String> = read
                    .values
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                let text = match values.len() {
                    0 => "(not found)".to_string(),
                    1 => values[0].clone(),
                    n => format!("{n} siblings: {}", values.join(" | ")),
                };
                let json =
                    serde_json::json!({ "values": values, "context": read.context.to_hex() });
                (text, json)
            });
        }
        Command::Mput { items, w } => {
            let mut writes = Vec::with_capacity(items.len());
            let mut keys = Vec::with_capacity(items.len());
            for item in &items {
                let (key, value) = item
                    .split_once('=')
                    .ok_or_else(|| format!("{item:?}: give each item as KEY=VALUE"))?;
                keys.push(key.to_string());
                writes.push(kv_server::client::BatchWrite::put(key, value, None));
            }
            let client = client.with_quorums(w, None);
            let results = client.write_many(writes).await;
            return many(args.json, &keys, results, |written| {
                let context = written.context.to_hex();
                (
                    format!("ok (context {context})"),
                    serde_json::json!({ "ok": true, "context": context }),
                )
            });
        }
        other => return admin(&args.node, args.json, &credentials, other).await,
    };
    Ok(output)
}

/// A line per item of an mget or mput (`key: what happened`), or a JSON
/// object per line; `Err` with every line and a count when any failed.
fn many<T>(
    json: bool,
    keys: &[String],
    results: Vec<Result<T, ClientError>>,
    show: impl Fn(&T) -> (String, serde_json::Value),
) -> Result<String, String> {
    let mut out = String::new();
    let mut failed = 0;
    for (key, result) in keys.iter().zip(&results) {
        let (text, json_line) = match result {
            Ok(item) => {
                let (text, value) = show(item);
                (text, serde_json::json!({ "key": key, "result": value }))
            }
            Err(e) => {
                failed += 1;
                (
                    format!("error: {e}"),
                    serde_json::json!({ "key": key, "error": e.to_string() }),
                )
            }
        };
        if json {
            let _ = writeln!(out, "{json_line}");
        } else {
            let _ = writeln!(out, "{key}: {text}");
        }
    }
    if failed == 0 {
        Ok(out)
    } else {
        Err(format!("{out}{failed} of {} failed", keys.len()))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(output) => {
            // A reader that stops early (`kvctl get k | head -1`) closes the
            // pipe; that is not an error of ours.
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(output.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kvctl: writing the output: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(message) => {
            eprintln!("kvctl: {message}");
            ExitCode::FAILURE
        }
    }
}
