//! The peers file (`DATA_DIR/peers.json`): the peers that worked well and the bans in force,
//! kept across restarts.
//!
//! A peer is remembered once it is connected, has sent a Status on our chain and has a score of
//! zero or more; a peer banned, or connected with a negative score, is forgotten. At start its
//! addresses are dialled (and redialled while the node is alone, like the bootnodes), so a
//! restart does not depend on the bootnodes being up, and each ban is restored for what is left
//! of it. The file is bounded ([`MAX_PEERS`] peers, the longest unseen and then the lowest scored
//! evicted first; [`MAX_BANS`] bans, those ending soonest evicted first), written atomically
//! (a temporary file, synced, renamed over the old one) every [`SAVE_INTERVAL`] and at shutdown.
//! A file that cannot be read or parsed is a warning, never a fatal error: it is moved aside to
//! `peers.json.corrupt` for inspection and the node starts with its bootnodes alone; entries
//! that do not parse are skipped one by one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use syncnode_network::{KnownPeer, Multiaddr, NetworkHandle, PeerId};

use crate::http::PeersView;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "peers.json";
/// Most peers remembered.
pub const MAX_PEERS: usize = 128;
/// Most bans remembered (as many as the network's ban book holds).
pub const MAX_BANS: usize = syncnode_network::ban_book::MAX_BANS;
/// How often the file is written while the node runs.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(60);
/// Most addresses remembered per peer.
const MAX_ADDRS: usize = 4;
/// The format's version.
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    version: u32,
    peers: Vec<StoredPeer>,
    bans: Vec<StoredBan>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredPeer {
    peer_id: String,
    addrs: Vec<String>,
    score: f64,
    /// When it last worked well, in ms since the Unix epoch.
    last_good_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredBan {
    peer_id: String,
    /// End of the ban, in ms since the Unix epoch.
    until_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct Remembered {
    addrs: Vec<Multiaddr>,
    score: f64,
    last_good_ms: u64,
}

/// The peers file's content, and where it lives.
#[derive(Debug)]
pub struct PeerFile {
    path: PathBuf,
    peers: HashMap<PeerId, Remembered>,
    /// End of each ban, in ms since the Unix epoch.
    bans: HashMap<PeerId, u64>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl PeerFile {
    /// An empty file at `path`, not yet written.
    pub fn empty(path: &Path) -> PeerFile {
        PeerFile {
            path: path.to_owned(),
            peers: HashMap::new(),
            bans: HashMap::new(),
        }
    }

    /// Reads the file at `path`; a missing file is an empty one, and one that cannot be read or
    /// parsed is moved aside with a warning.
    pub fn load(path: &Path) -> PeerFile {
        let mut file = PeerFile::empty(path);
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return file,
            Err(e) => {
                file.set_aside(&e.to_string());
                return file;
            }
        };
        match serde_json::from_str::<Stored>(&text) {
            Ok(stored) if stored.version == VERSION => file.take(stored),
            Ok(stored) => file.set_aside(&format!("unknown version {}", stored.version)),
            Err(e) => file.set_aside(&e.to_string()),
        }
        file
    }

    /// Moves an unusable file aside, keeping it for inspection.
    fn set_aside(&self, why: &str) {
        let aside = self.path.with_extension("json.corrupt");
        let moved = std::fs::rename(&self.path, &aside);
        tracing::warn!(
            file = %self.path.display(),
            moved_to = %aside.display(),
            moved = moved.is_ok(),
            why,
            "peers file unusable: starting without remembered peers"
        );
    }

    /// Takes the entries of a parsed file that parse, within the bounds.
    fn take(&mut self, stored: Stored) {
        let mut skipped = 0usize;
        for p in stored.peers {
            let addrs: Vec<Multiaddr> = p
                .addrs
                .iter()
                .filter_map(|a| a.parse().ok())
                .take(MAX_ADDRS)
                .collect();
            match p.peer_id.parse::<PeerId>() {
                Ok(peer) if !addrs.is_empty() && p.score.is_finite() => {
                    let remembered = Remembered {
                        addrs,
                        score: p.score,
                        last_good_ms: p.last_good_ms,
                    };
                    self.peers.insert(peer, remembered);
                }
                _ => skipped += 1,
            }
        }
        for b in stored.bans {
            match b.peer_id.parse::<PeerId>() {
                Ok(peer) => {
                    self.bans.insert(peer, b.until_ms);
                }
                Err(_) => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(file = %self.path.display(), skipped, "peers file: entries that do not parse skipped");
        }
        self.bound();
    }

    /// The remembered peers' addresses, the most recently good first.
    pub fn dial_addrs(&self) -> Vec<Multiaddr> {
        let mut peers: Vec<&Remembered> = self.peers.values().collect();
        peers.sort_by(|a, b| {
            b.last_good_ms
                .cmp(&a.last_good_ms)
                .then(b.score.total_cmp(&a.score))
        });
        peers.into_iter().flat_map(|r| r.addrs.iter().cloned()).collect()
    }

    /// The bans still in force at `now_ms`, each with what is left of it, the soonest ending
    /// first.
    pub fn bans_left(&self, now_ms: u64) -> Vec<(PeerId, Duration)> {
        let mut left: Vec<(PeerId, Duration)> = self
            .bans
            .iter()
            .filter(|&(_, &until)| until > now_ms)
            .map(|(peer, until)| (*peer, Duration::from_millis(until - now_ms)))
            .collect();
        left.sort_by_key(|&(_, d)| d);
        left
    }

    /// Number of peers remembered.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Takes in what the network says of its peers at `now_ms`; `on_our_chain` tells the peers
    /// whose Status on our chain the sync engine holds (only those are remembered).
    pub fn update(&mut self, known: &[KnownPeer], on_our_chain: &dyn Fn(&PeerId) -> bool, now_ms: u64) {
        for k in known {
            if let Some(left) = k.ban_left {
                let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                self.bans.insert(k.peer_id, now_ms.saturating_add(left_ms));
                self.peers.remove(&k.peer_id);
            } else if k.connected && k.score < 0.0 {
                self.peers.remove(&k.peer_id);
            } else if k.connected && on_our_chain(&k.peer_id) && !k.addrs.is_empty() {
                let addrs = k.addrs.iter().take(MAX_ADDRS).cloned().collect();
                let remembered = Remembered {
                    addrs,
                    score: k.score,
                    last_good_ms: now_ms,
                };
                self.peers.insert(k.peer_id, remembered);
            }
        }
        self.bans.retain(|_, until| *until > now_ms);
        self.bound();
    }

    /// Evicts the longest unseen (then lowest scored) peers and the soonest ending bans beyond
    /// the bounds.
    fn bound(&mut self) {
        if self.peers.len() > MAX_PEERS {
            let mut ranked: Vec<(u64, f64, PeerId)> = self
                .peers
                .iter()
                .map(|(p, r)| (r.last_good_ms, r.score, *p))
                .collect();
            ranked.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            for (_, _, peer) in ranked.iter().take(self.peers.len() - MAX_PEERS) {
                self.peers.remove(peer);
            }
        }
        if self.bans.len() > MAX_BANS {
            let mut ends: Vec<(u64, PeerId)> = self.bans.iter().map(|(p, u)| (*u, *p)).collect();
            ends.sort();
            for (_, peer) in ends.iter().take(self.bans.len() - MAX_BANS) {
                self.bans.remove(peer);
            }
        }
    }

    /// Writes the file atomically: a temporary file beside it, synced, then renamed over it.
    pub fn save(&self) -> std::io::Result<()> {
        let stored = Stored {
            version: VERSION,
            peers: self
                .peers
                .iter()
                .map(|(peer, r)| StoredPeer {
                    peer_id: peer.to_string(),
                    addrs: r.addrs.iter().map(ToString::to_string).collect(),
                    score: r.score,
                    last_good_ms: r.last_good_ms,
                })
                .collect(),
            bans: self
                .bans
                .iter()
                .map(|(peer, until)| StoredBan {
                    peer_id: peer.to_string(),
                    until_ms: *until,
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut out = std::fs::File::create(&tmp)?;
        out.write_all(&bytes)?;
        out.sync_all()?;
        drop(out);
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// The task that keeps the peers file: it writes it every `every` and once more when stopped.
pub struct Keeper {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts keeping `file` from what `network` says of its peers and which of them the sync
/// engine holds a Status of (`peers`, the view `/peers` serves).
pub fn keep(
    file: PeerFile,
    network: NetworkHandle,
    peers: tokio::sync::watch::Receiver<PeersView>,
    every: Duration,
) -> Keeper {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut file = file;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => file = save_now(file, &network, &peers).await,
                _ = &mut stopped => break,
            }
        }
        let file = save_now(file, &network, &peers).await;
        tracing::info!(peers = file.peer_count(), "peers file written");
    });
    Keeper { stop, task }
}

impl Keeper {
    /// Writes the file a last time (the network must still run) and ends the task.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Updates `file` from the network and writes it on a blocking thread.
async fn save_now(
    mut file: PeerFile,
    network: &NetworkHandle,
    peers: &tokio::sync::watch::Receiver<PeersView>,
) -> PeerFile {
    let known = network.known_peers().await;
    let on_our_chain = peers.borrow().clone();
    file.update(&known, &|p| on_our_chain.contains_key(p), now_ms());
    let path = file.path.clone();
    match tokio::task::spawn_blocking(move || {
        let written = file.save();
        (file, written)
    })
    .await
    {
        Ok((file, Ok(()))) => file,
        Ok((file, Err(e))) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the peers file");
            file
        }
        Err(e) => {
            tracing::warn!(error = %e, "the peers file writer failed");
            PeerFile::load(&path)
        }
    }
}

#[cfg(test)]
mod tests;
