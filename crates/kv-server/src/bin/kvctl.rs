//! `kvctl`: talk to a kv node.
//!
//! ```text
//! kvctl --node 127.0.0.1:7001 put <key> <value> [--context <hex>]
//! kvctl --node 127.0.0.1:7001 get <key>
//! kvctl --node 127.0.0.1:7001 delete <key> --context <hex>
//! ```
//! A put without a context on an existing key makes a concurrent sibling
//! (as in Riak); send the context of a read to supersede what it saw.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kv_server::proto::kv_client::KvClient;
use kv_server::proto::{DeleteRequest, GetRequest, PutRequest};

#[derive(Debug, Parser)]
#[command(name = "kvctl", about = "Talk to a kv node")]
struct Args {
    /// The node to talk to.
    #[arg(long, default_value = "127.0.0.1:7001")]
    node: String,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
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
    },
    /// Read a key: its value or every sibling, and the context.
    Get {
        key: String,
        /// Read quorum for this request.
        #[arg(long)]
        r: Option<u32>,
    },
    /// Delete a key (send the context of a read).
    Delete {
        key: String,
        #[arg(long, default_value = "")]
        context: String,
        #[arg(long)]
        w: Option<u32>,
    },
}

/// Renders the outcome of a write.
fn written(json: bool, what: &str, context: &[u8]) -> String {
    if json {
        format!(
            "{}\n",
            serde_json::json!({ "ok": true, "context": hex(context) })
        )
    } else {
        format!("{what}\ncontext: {}\n", hex(context))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!("context {text:?} is not hex"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16)
                .map_err(|_| format!("context {text:?} is not hex"))
        })
        .collect()
}

/// Runs one command and returns what it prints.
async fn run(args: Args) -> Result<String, String> {
    let url = format!("http://{}", args.node);
    let mut client = KvClient::connect(url)
        .await
        .map_err(|e| format!("cannot reach {}: {e}", args.node))?;
    let fail = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    let output = match args.command {
        Command::Put {
            key,
            value,
            context,
            w,
        } => {
            let reply = client
                .put(PutRequest {
                    key: key.into_bytes(),
                    value: value.into_bytes(),
                    context: unhex(&context)?,
                    w: w.unwrap_or(0),
                })
                .await
                .map_err(fail)?
                .into_inner();
            written(args.json, "ok", &reply.context)
        }
        Command::Delete { key, context, w } => {
            let reply = client
                .delete(DeleteRequest {
                    key: key.into_bytes(),
                    context: unhex(&context)?,
                    w: w.unwrap_or(0),
                })
                .await
                .map_err(fail)?
                .into_inner();
            written(args.json, "deleted", &reply.context)
        }
        Command::Get { key, r } => {
            let reply = client
                .get(GetRequest {
                    key: key.into_bytes(),
                    r: r.unwrap_or(0),
                })
                .await
                .map_err(fail)?
                .into_inner();
            let values: Vec<String> = reply
                .values
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            let mut out = String::new();
            if args.json {
                let json = serde_json::json!({ "values": values, "context": hex(&reply.context) });
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
                let _ = writeln!(out, "context: {}", hex(&reply.context));
            }
            out
        }
    };
    Ok(output)
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
