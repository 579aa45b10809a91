//! The settings of `syncnode run`: flags, a TOML file (`--config`), and their defaults.
//!
//! One struct serves both: every setting is optional in it, a flag given on the command line
//! overrides the file, and [`RunArgs::resolved`] fills in the defaults in one place. `--print-config`
//! prints the resolved settings as TOML, which `--config` reads back unchanged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

/// Settings of `syncnode run`. File keys are the flag names with `-` (e.g. `data-dir = "..."`).
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunArgs {
    /// TOML file of settings; flags given here override it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective settings as TOML and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// Chain spec JSON file (required).
    #[arg(long)]
    pub chain: Option<PathBuf>,
    /// Data directory: the store and the network key (required).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Multiaddr to listen on; repeatable [default: /ip4/0.0.0.0/tcp/0 and /ip4/0.0.0.0/udp/0/quic-v1].
    #[arg(long = "listen")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<String>,
    /// Multiaddr of a peer to dial at start; repeatable.
    #[arg(long = "bootnode")]
    #[serde(default, rename = "bootnode", skip_serializing_if = "Vec::is_empty")]
    pub bootnodes: Vec<String>,
    /// Address of the HTTP API (e.g. 127.0.0.1:8080); off when absent.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Produce blocks in the slots where --dev-key is the scheduled authority (`--produce=false`
    /// turns off `produce = true` of the config file).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub produce: Option<bool>,
    /// Index of the development key to produce with.
    #[arg(long)]
    pub dev_key: Option<u32>,
    /// Payload size of produced blocks in bytes [default: 1024].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub payload_bytes: Option<u64>,
    /// Discover peers on the local network by mDNS (`--mdns=false` turns off `mdns = true` of
    /// the config file).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub mdns: Option<bool>,
    /// Most peers connected at once [default: 50].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_peers: Option<u32>,
    /// Cap on blocks this node serves per second to all peers together (for benchmarks).
    #[arg(long)]
    pub serve_blocks_per_sec: Option<u32>,
    /// Cap on blocks served per second to all peers together while this node's own sync is
    /// behind (syncing or stalled; not while synced or backfilling); 0 for no such cap
    /// [default: 2048].
    #[arg(long, value_name = "N")]
    pub serve_blocks_per_sec_while_syncing: Option<u32>,
    /// Start from this trusted block (HEIGHT:HASH) instead of genesis, then backfill history.
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// Keep only the last N blocks below the finalized block: backfill stops at finalized - N and
    /// older blocks are pruned as the head advances [default: keep all history].
    #[arg(long, value_name = "N")]
    pub history_blocks: Option<u64>,
    /// Blocks per range request of the sync engine, forward and backfill, 1..=1024 [default: 512].
    #[arg(long)]
    pub batch_size: Option<u64>,
    /// Most batches downloaded ahead of import [default: 32].
    #[arg(long)]
    pub window_batches: Option<usize>,
    /// Most bytes of blocks downloaded ahead of import, in MiB [default: 64].
    #[arg(long)]
    pub window_mib: Option<usize>,
    /// Most backfill batches downloaded ahead of import [default: 4].
    #[arg(long)]
    pub backfill_window_batches: Option<usize>,
    /// Most bytes of backfill blocks downloaded ahead of import, in MiB [default: 32].
    #[arg(long)]
    pub backfill_window_mib: Option<usize>,
    /// Seconds without progress, while peers are ahead, before the state is `stalled` [default: 60].
    #[arg(long)]
    pub stall_after_secs: Option<u64>,
    /// Pause importing while the data directory's filesystem has less than this free, in MiB
    /// (`disk_full` in /status); importing resumes by itself once there is room [default: 256].
    #[arg(long, value_name = "MIB")]
    pub min_free_space: Option<u64>,
    /// Lab-only link emulation (flags marked LAB ONLY; not in the config file).
    #[command(flatten)]
    #[serde(skip)]
    pub link: crate::link_args::LinkArgs,
}

/// The default listen addresses.
pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"];

impl RunArgs {
    /// These flags over the settings of `file`.
    fn over(self, file: RunArgs) -> RunArgs {
        RunArgs {
            config: self.config,
            print_config: self.print_config,
            chain: self.chain.or(file.chain),
            data_dir: self.data_dir.or(file.data_dir),
            listen: if self.listen.is_empty() {
                file.listen
            } else {
                self.listen
            },
            bootnodes: if self.bootnodes.is_empty() {
                file.bootnodes
            } else {
                self.bootnodes
            },
            http: self.http.or(file.http),
            produce: self.produce.or(file.produce),
            dev_key: self.dev_key.or(file.dev_key),
            payload_bytes: self.payload_bytes.or(file.payload_bytes),
            mdns: self.mdns.or(file.mdns),
            max_peers: self.max_peers.or(file.max_peers),
            serve_blocks_per_sec: self.serve_blocks_per_sec.or(file.serve_blocks_per_sec),
            serve_blocks_per_sec_while_syncing: self
                .serve_blocks_per_sec_while_syncing
                .or(file.serve_blocks_per_sec_while_syncing),
            checkpoint: self.checkpoint.or(file.checkpoint),
            history_blocks: self.history_blocks.or(file.history_blocks),
            batch_size: self.batch_size.or(file.batch_size),
            window_batches: self.window_batches.or(file.window_batches),
            window_mib: self.window_mib.or(file.window_mib),
            backfill_window_batches: self.backfill_window_batches.or(file.backfill_window_batches),
            backfill_window_mib: self.backfill_window_mib.or(file.backfill_window_mib),
            stall_after_secs: self.stall_after_secs.or(file.stall_after_secs),
            min_free_space: self.min_free_space.or(file.min_free_space),
            link: self.link,
        }
    }

    /// Reads a settings file.
    pub fn from_file(path: &Path) -> anyhow::Result<RunArgs> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config {}", path.display()))
    }

    /// The flags over `--config`'s file (if any), with every default filled in, checked for the
    /// settings that have no default.
    pub fn resolved(self) -> anyhow::Result<RunArgs> {
        let merged = match &self.config {
            Some(path) => {
                let file = RunArgs::from_file(path)?;
                self.over(file)
            }
            None => self,
        };
        // The sync engine owns its defaults; `--print-config` shows them.
        let sync = syncnode_sync::SyncConfig::default();
        let r = RunArgs {
            listen: if merged.listen.is_empty() {
                DEFAULT_LISTEN.map(String::from).to_vec()
            } else {
                merged.listen
            },
            produce: Some(merged.produce.unwrap_or(false)),
            mdns: Some(merged.mdns.unwrap_or(false)),
            payload_bytes: Some(merged.payload_bytes.unwrap_or(1024)),
            max_peers: Some(merged.max_peers.unwrap_or(50)),
            serve_blocks_per_sec_while_syncing: Some(
                merged
                    .serve_blocks_per_sec_while_syncing
                    .unwrap_or(syncnode_network::config::DEFAULT_SERVE_BLOCKS_PER_SEC_WHILE_SYNCING),
            ),
            batch_size: Some(merged.batch_size.unwrap_or(sync.batch_size)),
            window_batches: Some(merged.window_batches.unwrap_or(sync.window_batches)),
            window_mib: Some(merged.window_mib.unwrap_or(sync.window_bytes >> 20)),
            backfill_window_batches: Some(
                merged
                    .backfill_window_batches
                    .unwrap_or(sync.backfill_window_batches),
            ),
            backfill_window_mib: Some(
                merged
                    .backfill_window_mib
                    .unwrap_or(sync.backfill_window_bytes >> 20),
            ),
            stall_after_secs: Some(merged.stall_after_secs.unwrap_or(sync.stall_after_ms / 1000)),
            min_free_space: Some(
                merged
                    .min_free_space
                    .unwrap_or(syncnode_node::disk::DEFAULT_MIN_FREE_SPACE >> 20),
            ),
            ..merged
        };
        anyhow::ensure!(
            r.chain.is_some(),
            "--chain (or `chain` in the config file) is required"
        );
        anyhow::ensure!(
            r.data_dir.is_some(),
            "--data-dir (or `data-dir` in the config file) is required"
        );
        anyhow::ensure!(
            r.produce != Some(true) || r.dev_key.is_some(),
            "--produce needs --dev-key"
        );
        anyhow::ensure!(
            r.payload_bytes.is_some_and(|b| b <= 1_048_576),
            "payload-bytes must be at most 1048576"
        );
        anyhow::ensure!(
            r.max_peers.is_some_and(|n| n >= 1),
            "max-peers must be at least 1"
        );
        Ok(r)
    }

    /// The settings as TOML, then each setting left unset as a comment saying what that means.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        let mut text = toml::to_string(self)?;
        let unset = [
            (self.http.is_none(), "http", "the HTTP API is off"),
            (self.dev_key.is_none(), "dev-key", "no key to produce with"),
            (
                self.serve_blocks_per_sec.is_none(),
                "serve-blocks-per-sec",
                "no cap on blocks served",
            ),
            (
                self.checkpoint.is_none(),
                "checkpoint",
                "the node starts from genesis",
            ),
            (
                self.history_blocks.is_none(),
                "history-blocks",
                "all history is kept",
            ),
            (
                self.bootnodes.is_empty(),
                "bootnode",
                "no peer is dialled at start",
            ),
        ];
        for (_, key, meaning) in unset.iter().filter(|(is_unset, _, _)| *is_unset) {
            text.push_str(&format!("# {key}: unset ({meaning})\n"));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_print_config_round_trips() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "chain = \"spec.json\"\ndata-dir = \"from-file\"\nbootnode = [\"/ip4/127.0.0.1/tcp/1\"]\nmax-peers = 7\nmdns = true\n",
        )
        .expect("write");
        let flags = RunArgs {
            config: Some(path),
            data_dir: Some("from-flag".into()),
            ..RunArgs::default()
        };
        let r = flags.resolved().expect("resolves");
        assert_eq!(
            r.data_dir,
            Some(PathBuf::from("from-flag")),
            "a flag overrides the file"
        );
        assert_eq!(r.max_peers, Some(7));
        assert_eq!(r.mdns, Some(true));
        assert_eq!(r.bootnodes, vec!["/ip4/127.0.0.1/tcp/1".to_string()]);
        assert_eq!(r.batch_size, Some(512), "defaults fill the rest");
        // What --print-config prints reads back to the same settings.
        let printed = r.to_toml().expect("toml");
        let back = RunArgs {
            config: None,
            ..toml::from_str::<RunArgs>(&printed).expect("reads back")
        };
        assert_eq!(
            format!("{:?}", back.resolved().expect("resolves")),
            format!("{:?}", RunArgs { config: None, ..r })
        );
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "chian = \"typo.json\"\n").expect("write");
        let err = RunArgs {
            config: Some(path),
            ..RunArgs::default()
        }
        .resolved()
        .expect_err("unknown key");
        assert!(format!("{err:#}").contains("chian"), "{err:#}");
        let err = RunArgs::default().resolved().expect_err("no chain");
        assert!(err.to_string().contains("--chain"));
    }
}

#[cfg(test)]
mod flag_tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn run_args(flags: &[&str]) -> super::RunArgs {
        let cli = Cli::try_parse_from(["syncnode", "run"].iter().chain(flags)).expect("parses");
        match cli.command {
            Command::Run(args) => *args,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn a_flag_turns_off_what_the_file_turns_on() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("node.toml");
        let file = "chain = \"s.json\"\ndata-dir = \"d\"\nmdns = true\nproduce = true\ndev-key = 0\n";
        std::fs::write(&path, file).expect("write");
        let config = path.to_str().expect("utf-8");
        let r = run_args(&["--config", config]).resolved().expect("resolves");
        assert_eq!((r.mdns, r.produce), (Some(true), Some(true)));
        let r = run_args(&["--config", config, "--mdns=false", "--produce=false"])
            .resolved()
            .expect("resolves");
        assert_eq!((r.mdns, r.produce), (Some(false), Some(false)));
        let r = run_args(&["--chain", "s.json", "--data-dir", "d", "--mdns"])
            .resolved()
            .expect("resolves");
        assert_eq!((r.mdns, r.produce), (Some(true), Some(false)));
    }

    #[test]
    fn print_config_names_what_is_unset() {
        let r = run_args(&["--chain", "s.json", "--data-dir", "d", "--history-blocks", "9"])
            .resolved()
            .expect("resolves");
        let text = r.to_toml().expect("toml");
        assert!(text.contains("backfill-window-batches = 4"), "{text}");
        assert!(text.contains("mdns = false"), "{text}");
        assert!(text.contains("# http: unset (the HTTP API is off)"), "{text}");
        assert!(!text.contains("# history-blocks"), "{text}");
    }
}
