//! Command-line definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::run_config::RunArgs;

/// syncnode: a libp2p peer-to-peer block sync node.
#[derive(Debug, Parser)]
#[command(name = "syncnode", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogOptions,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct LogOptions {
    /// Log filter when RUST_LOG is unset (e.g. `info`, `syncnode=debug,libp2p=warn`).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Chain specs and generated chains.
    #[command(subcommand)]
    Chain(ChainCommand),
    /// Inspect, export and repair a data directory.
    #[command(subcommand)]
    Db(DbCommand),
    /// Run a node: join the network, sync, seed, follow the head.
    Run(Box<RunArgs>),
    /// A local testnet on 127.0.0.1: a producer, nodes syncing from genesis, one from a checkpoint.
    Devnet(DevnetArgs),
    /// Show a running node's status and peers.
    Status(StatusArgs),
    /// Print canonical blocks as JSON lines, in height order, resumable through a cursor file.
    Subscribe(SubscribeArgs),
}

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// The node's HTTP API address (its --http), HOST:PORT.
    #[arg(long, value_parser = parse_http_addr)]
    pub http: std::net::SocketAddr,
    /// File holding the last height printed; the next run continues after it.
    #[arg(long)]
    pub cursor_file: PathBuf,
    /// First height when the cursor file does not exist yet, or `earliest` for the lowest height
    /// the node holds above genesis (a pruned node refuses a start below it) [default: 0].
    #[arg(long, value_name = "HEIGHT|earliest", value_parser = parse_start)]
    pub from: Option<Start>,
    /// Exit 0 after printing this height.
    #[arg(long)]
    pub until: Option<u64>,
}

/// Where a subscription without a cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Height(u64),
    /// The node's `earliest_height` when the stream opens.
    Earliest,
}

fn parse_start(text: &str) -> Result<Start, String> {
    if text == "earliest" {
        return Ok(Start::Earliest);
    }
    text.parse()
        .map(Start::Height)
        .map_err(|_| format!("`{text}` is neither a height nor `earliest`"))
}

/// `HOST:PORT` of a node's HTTP API, resolved once; of several addresses, the first IPv4 one
/// (`localhost` is 127.0.0.1 where nodes listen, not ::1).
pub fn parse_http_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = text
        .to_socket_addrs()
        .map_err(|e| format!("`{text}` is not HOST:PORT that resolves: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node's HTTP API address (its --http), HOST:PORT.
    #[arg(long, env = "SYNCNODE_HTTP", value_parser = parse_http_addr)]
    pub http: std::net::SocketAddr,
    /// Print JSON ({"status": ..., "peers": [...]}) instead of a table.
    #[arg(long, conflicts_with = "health")]
    pub json: bool,
    /// A health check (a container's): read only /status, print one line, and exit 0 when the
    /// node answers and is neither stalled nor paused by a full disk, 1 otherwise.
    #[arg(long)]
    pub health: bool,
}

#[derive(Debug, Args)]
pub struct DevnetArgs {
    /// Syncing nodes besides the producer (the last starts from a checkpoint and backfills).
    /// Each knows the producer and the two nodes started before it; the rest it finds through
    /// Kademlia.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub nodes: u32,
    /// Most peers of each node [default: the node's default].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_peers: Option<u32>,
    /// Restart this many syncing nodes, one at a time at random, while they sync (SIGKILL or
    /// SIGTERM, then the same command on the same store and ports).
    #[arg(long, default_value_t = 0)]
    pub churn: u32,
    /// Every node's emulated link (lab only; docs/lab.md).
    #[command(flatten)]
    pub link: crate::link_args::LinkArgs,
    /// Blocks of pre-generated history.
    #[arg(long, default_value_t = 50_000)]
    pub blocks: u64,
    /// Payload size of each block in bytes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub payload_bytes: u64,
    /// Keep the nodes running after they are synced (stop with Ctrl-C).
    #[arg(long)]
    pub keep_running: bool,
    /// Directory for the chain spec, stores and logs [default: a temporary directory, removed at the end].
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Give up (exit non-zero) if the nodes are not all synced after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

#[derive(Debug, Subcommand)]
pub enum ChainCommand {
    /// Print a chain spec whose authorities are development keys 0..N.
    Spec(SpecArgs),
    /// Append N valid blocks signed by the development keys to a store.
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Chain name.
    #[arg(long)]
    pub name: String,
    /// Number of authorities (development keys 0..N).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub authorities: u32,
    /// Slot length in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub slot_ms: u64,
    /// Blocks below the head before a block is final.
    #[arg(long, default_value_t = 32)]
    pub finality_depth: u64,
    /// Genesis time in ms since the Unix epoch [default: 10,000,000 slots before now, rounded
    /// down to the second, so that generated history lies in the past].
    #[arg(long)]
    pub genesis_timestamp_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Chain spec JSON file.
    #[arg(long)]
    pub chain: PathBuf,
    /// Data directory of the store (created with genesis if new).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Number of blocks to append after the current head.
    #[arg(long)]
    pub blocks: u64,
    /// Payload size of each block in bytes (at most 1 MiB).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub payload_bytes: u64,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Verify the whole stored chain: every rule, every link, every pointer.
    Check(DataDirArgs),
    /// Write canonical blocks, ascending, as varint-framed protobuf `Block` messages to stdout.
    Export(ExportArgs),
    /// Import what `db export` wrote, verifying every block as sync does; re-running after a
    /// kill continues from the store's head.
    Import(ImportArgs),
    /// Check the recent chain and roll back pointers whose blocks are missing or do not link.
    Repair(DataDirArgs),
}

#[derive(Debug, Args)]
pub struct DataDirArgs {
    /// Data directory of the store.
    #[arg(long)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Data directory of the store.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// First height [default: the lowest stored height].
    #[arg(long)]
    pub from: Option<u64>,
    /// Last height, inclusive [default: the head].
    #[arg(long)]
    pub to: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Data directory of the store (created when it does not exist and --chain is given).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Chain spec JSON file: needed to create a new store; an existing store must be of this chain.
    #[arg(long)]
    pub chain: Option<PathBuf>,
    /// Verification threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub verify_threads: usize,
    /// The file `db export` wrote, or `-` for standard input.
    pub file: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_addresses_take_host_names() {
        let local = parse_http_addr("localhost:8000").expect("localhost");
        assert_eq!(local, "127.0.0.1:8000".parse().expect("addr"));
        assert_eq!(
            parse_http_addr("127.0.0.1:9").expect("ip"),
            "127.0.0.1:9".parse().expect("addr")
        );
        assert!(parse_http_addr("localhost").is_err(), "no port");
        let cli = Cli::try_parse_from(["syncnode", "status", "--http", "localhost:8001"]).expect("parses");
        assert!(matches!(cli.command, Command::Status(a) if a.http.port() == 8001));
    }

    #[test]
    fn the_help_opens_with_what_syncnode_is() {
        use clap::CommandFactory;
        let help = Cli::command().render_help().to_string();
        assert_eq!(
            help.lines().next(),
            Some("syncnode: a libp2p peer-to-peer block sync node")
        );
    }

    #[test]
    fn a_subscription_starts_at_a_height_or_the_earliest() {
        assert_eq!(parse_start("12"), Ok(Start::Height(12)));
        assert_eq!(parse_start("earliest"), Ok(Start::Earliest));
        assert!(parse_start("latest").is_err());
    }
}
