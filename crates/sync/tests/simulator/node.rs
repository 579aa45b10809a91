//! The simulator's node side: it carries out the engine's actions as the node does (requests to
//! simulated peers, imports into the in-memory store checking rules 1–2, charges applied to the
//! score book, disconnects and bans per its verdict) and checks the engine's window after each.

use super::*;

impl Sim {
    pub(super) fn check_engine(&self, context: &str) -> Result<(), String> {
        let stats = self.engine.stats();
        let max_blocks = self.config.window_batches * self.config.batch_size as usize;
        if stats.buffered_blocks > max_blocks || stats.buffered_bytes > self.config.window_bytes {
            return Err(format!("window exceeded after {context}: {stats:?}"));
        }
        if stats.backfill_buffered_blocks
            > self.config.backfill_window_batches * self.config.backfill_batch_size as usize
        {
            return Err(format!("backfill window exceeded after {context}: {stats:?}"));
        }
        Ok(())
    }

    pub(super) fn pump(&mut self) -> Result<(), String> {
        while let Some(action) = self.engine.poll_action() {
            if self.trace {
                println!("{:>8} {}", self.now, short(&action));
            }
            *self.counts.entry(label(&action)).or_insert(0) += 1;
            self.perform(action)?;
        }
        self.check_engine("pump")
    }

    pub(super) fn perform(&mut self, action: Action<u32>) -> Result<(), String> {
        match action {
            Action::SendRangeRequest {
                peer,
                id,
                start_height,
                count,
                ..
            } => {
                if let (Some(c), Some(true)) = (self.checkpoint, self.engine.backfill_complete())
                    && start_height < c
                {
                    return Err(format!("backfill request at {start_height} after completion"));
                }
                self.answer_range(peer, id, start_height, count);
            }
            Action::SendRootRequest { peer, id, hashes, .. } => self.answer_root(peer, id, hashes),
            Action::RequestStatus { peer } => {
                let epoch = self.peers.get(&peer).map_or(0, |p| p.epoch);
                let delay = self.latency(peer);
                self.schedule(delay, Event::Status { peer, epoch });
            }
            Action::Import {
                id,
                blocks,
                direction,
            } => {
                let result = self.import(&blocks, direction)?;
                self.schedule(3, Event::ImportDone { id, result });
            }
            Action::Penalise { peer, action, .. } => {
                if action != PeerAction::UsefulResponse {
                    self.charges.push((peer, action));
                }
                match self.scores.apply(&peer, action, self.now) {
                    Verdict::Keep => {}
                    Verdict::Disconnect => self.disconnect(peer, false),
                    Verdict::Ban { .. } => self.disconnect(peer, true),
                }
            }
            Action::BackfillComplete { .. } => self.backfill_completions += 1,
            Action::StateChanged(_) | Action::TargetChanged(_) => {}
        }
        Ok(())
    }

    pub(super) fn import(
        &mut self,
        blocks: &[Block],
        direction: Direction,
    ) -> Result<Result<(), ImportError>, String> {
        let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else {
            return Err("empty import".into());
        };
        for pair in blocks.windows(2) {
            check_link(&pair[1].header, &pair[0].header)
                .map_err(|e| format!("import does not chain inside: {e}"))?;
        }
        if direction == Direction::Forward {
            // An import after the head continues the one emitted before it; one at or below
            // the head is a fork search's, which only the store can judge.
            if first.height() > self.head + 1 && first.header.parent_hash != self.emitted_tip {
                return Err(format!(
                    "forward import at {} links to nothing emitted",
                    first.height()
                ));
            }
            self.emitted_tip = last.hash();
        } else {
            let lowest_parent = self.store[&self.lowest].header.parent_hash;
            if last.hash() != self.emitted_low_parent && last.hash() != lowest_parent {
                return Err(format!(
                    "backfill import {}..={} chains to nothing emitted",
                    first.height(),
                    last.height()
                ));
            }
            self.emitted_low_parent = first.header.parent_hash;
        }
        if self.rng.random_bool(self.profile.local_failure) {
            return Ok(Err(ImportError::Local("simulated disk error".into())));
        }
        match direction {
            Direction::Forward => return self.import_forward(blocks),
            Direction::Backfill => {
                let below = &self.store[&self.lowest];
                if below.header.parent_hash != last.hash() {
                    return Ok(Err(ImportError::DoesNotLink {
                        height: self.lowest,
                        hash: below.hash(),
                    }));
                }
                if let Err(e) = check_link(&below.header, &last.header) {
                    return Err(format!("engine offered a backfill block breaking {e}"));
                }
                for b in blocks {
                    self.store.insert(b.height(), b.clone());
                }
                self.lowest = first.height();
            }
        }
        Ok(Ok(()))
    }

    /// The store's fork choice: blocks already canonical are skipped; an unknown parent does
    /// not link; a fork below the finalized block is rejected; a chain no longer than ours is
    /// kept aside; a longer one becomes canonical, and the blocks it replaces go aside.
    pub(super) fn import_forward(&mut self, blocks: &[Block]) -> Result<Result<(), ImportError>, String> {
        let known = blocks
            .iter()
            .take_while(|b| self.store.get(&b.height()).is_some_and(|s| s.hash() == b.hash()))
            .count();
        let new = &blocks[known..];
        let (Some(first), Some(last)) = (new.first(), new.last()) else {
            return Ok(Ok(()));
        };
        let head = self.store[&self.head].hash();
        let parent_hash = first.header.parent_hash;
        let canonical = |h: Height| self.store.get(&h).map(Block::hash);
        let parent = if canonical(first.height() - 1) == Some(parent_hash) {
            self.store[&(first.height() - 1)].clone()
        } else if let Some(p) = self.side.get(&parent_hash) {
            p.clone()
        } else {
            return Ok(Err(ImportError::DoesNotLink {
                height: self.head,
                hash: head,
            }));
        };
        if let Err(e) = check_link(&first.header, &parent.header) {
            if parent.hash() == self.emitted_tip && first.height() > self.head {
                return Err(format!("engine offered a block breaking {e}"));
            }
            return Ok(Err(ImportError::Rejected {
                height: first.height(),
                reason: e.to_string(),
            }));
        }
        // Down from the parent through blocks aside to the fork point on our chain.
        let mut aside = Vec::new();
        let mut at = parent;
        while canonical(at.height()) != Some(at.hash()) {
            let Some(below) = self.side.get(&at.header.parent_hash).cloned().or_else(|| {
                let h = at.height().checked_sub(1)?;
                self.store
                    .get(&h)
                    .filter(|b| b.hash() == at.header.parent_hash)
                    .cloned()
            }) else {
                return Err(format!("block aside at {} hangs off nothing", at.height()));
            };
            aside.push(at);
            at = below;
        }
        if at.height() < self.finalized {
            return Ok(Err(ImportError::Rejected {
                height: first.height(),
                reason: format!("conflicts with the finalized block at {}", self.finalized),
            }));
        }
        if last.height() <= self.head && at.hash() != head {
            for b in new {
                self.side.insert(b.hash(), b.clone());
            }
            *self.counts.entry("store: side-chain imports".into()).or_insert(0) += 1;
            return Ok(Err(ImportError::SideChain {
                height: self.head,
                hash: head,
            }));
        }
        if at.hash() != head {
            *self.counts.entry("store: reorgs".into()).or_insert(0) += 1;
        }
        let replaced: Vec<Height> = self.store.range(at.height() + 1..).map(|(h, _)| *h).collect();
        for h in replaced {
            if let Some(b) = self.store.remove(&h) {
                self.side.insert(b.hash(), b);
            }
        }
        for b in aside.iter().rev().chain(new.iter()) {
            self.side.remove(&b.hash());
            self.store.insert(b.height(), b.clone());
        }
        self.head = last.height();
        self.finalized = self.finalized.max(self.head.saturating_sub(FINALITY_DEPTH));
        Ok(Ok(()))
    }

    pub(super) fn disconnect(&mut self, peer: u32, ban: bool) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.banned |= ban;
        if !p.connected {
            return;
        }
        p.connected = false;
        p.epoch += 1;
        let banned = p.banned;
        self.engine.peer_disconnected(self.now, &peer);
        if !banned {
            let delay = self.rng.random_range(5_000..30_000);
            self.schedule(delay, Event::Reconnect { peer });
        }
    }

    pub(super) fn verified(&self, blocks: &[Block]) -> bool {
        let fx = fixture();
        blocks
            .iter()
            .all(|b| fx.valid.get(&b.hash()) == Some(&b.signature) || check_standalone(b, &fx.spec).is_ok())
    }
}
