//! `syncnode run`: a node on the network until SIGINT or SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use syncnode_network::{Keypair, Multiaddr, NetworkConfig};
use syncnode_node::checkpoint::Checkpoint;
use syncnode_node::{NodeConfig, ProducerConfig};
use syncnode_sync::SyncConfig;
use syncnode_types::{Hash, SigningKey};

use crate::cli::RunArgs;

fn parse_addrs(what: &str, addrs: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    addrs
        .iter()
        .map(|a| {
            a.parse::<Multiaddr>()
                .with_context(|| format!("{what} {a:?} is not a multiaddr"))
        })
        .collect()
}

/// The node configuration that resolved settings describe.
pub fn node_config(args: &RunArgs) -> anyhow::Result<NodeConfig> {
    let (Some(chain), Some(data_dir)) = (&args.chain, &args.data_dir) else {
        anyhow::bail!("--chain and --data-dir are required");
    };
    let spec = crate::chain::read_spec(chain)?;
    let mut network = NetworkConfig::new(Keypair::generate_ed25519(), Hash::ZERO);
    network.listen = parse_addrs("listen", &args.listen)?;
    network.bootnodes = parse_addrs("bootnode", &args.bootnodes)?;
    network.mdns = args.mdns == Some(true);
    network.max_peers = args.max_peers.unwrap_or(network.max_peers);
    network.serve_blocks_per_sec = args.serve_blocks_per_sec;
    network.serve_blocks_per_sec_while_syncing = args.serve_blocks_per_sec_while_syncing.filter(|&n| n > 0);
    network.link = args.link.link();
    let producer = match (args.produce == Some(true), args.dev_key) {
        (true, Some(index)) => {
            let key = SigningKey::dev(index);
            if !spec.authorities.contains(&key.public_key()) {
                anyhow::bail!(
                    "dev key {index} ({}) is not an authority of chain {}",
                    key.public_key(),
                    spec.name
                );
            }
            Some(ProducerConfig {
                key,
                payload_bytes: args.payload_bytes.unwrap_or(1024) as usize,
            })
        }
        (true, None) => anyhow::bail!("--produce needs --dev-key"),
        (false, _) => None,
    };
    let defaults = SyncConfig::default();
    let sync = SyncConfig {
        batch_size: args.batch_size.unwrap_or(defaults.batch_size),
        backfill_batch_size: args.batch_size.unwrap_or(defaults.backfill_batch_size),
        window_batches: args.window_batches.unwrap_or(defaults.window_batches),
        window_bytes: args
            .window_mib
            .map_or(defaults.window_bytes, |m| m.saturating_mul(1 << 20)),
        backfill_window_batches: args
            .backfill_window_batches
            .unwrap_or(defaults.backfill_window_batches),
        backfill_window_bytes: args
            .backfill_window_mib
            .map_or(defaults.backfill_window_bytes, |m| m.saturating_mul(1 << 20)),
        stall_after_ms: args
            .stall_after_secs
            .map_or(defaults.stall_after_ms, |s| s.saturating_mul(1000)),
        ..defaults
    };
    sync.validate()
        .context("sync settings (batch-size, window-*, backfill-window-*, stall-after-secs)")?;
    let checkpoint = match &args.checkpoint {
        Some(text) => Some(
            text.parse::<Checkpoint>()
                .map_err(|e| anyhow::anyhow!("--checkpoint: {e}"))?,
        ),
        None => None,
    };
    Ok(NodeConfig {
        spec,
        data_dir: data_dir.clone(),
        network,
        http: args.http,
        producer,
        sync,
        verify_threads: 0,
        checkpoint,
        history_blocks: args.history_blocks,
        min_free_space: args
            .min_free_space
            .map_or(syncnode_node::disk::DEFAULT_MIN_FREE_SPACE, |m| {
                m.saturating_mul(1 << 20)
            }),
    })
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let args = args.resolved()?;
    // Checked before printing too: --print-config shows only settings the node would run with.
    let config = node_config(&args)?;
    if args.print_config {
        print!("{}", args.to_toml()?);
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot watch SIGTERM: {e}");
                    std::future::pending::<()>().await;
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        };
        syncnode_node::run(config, shutdown).await
    })?;
    // Blocking tasks still waiting on the network are abandoned rather than awaited.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}
