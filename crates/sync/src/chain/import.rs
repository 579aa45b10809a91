//! A chain's imports: complete batches offered in order, and what their results do.

use syncnode_types::Height;

use super::{Chain, ChainDirection, Ctx, Effects, refused};
use crate::events::{ImportError, ImportId};
use syncnode_proto::peer_score::PeerAction;

impl<P: Clone + Ord, D: ChainDirection<P>> Chain<P, D> {
    /// Offers complete batches for import, in order, each checked to link to the boundary.
    pub(crate) fn try_import(&mut self, ctx: &mut Ctx, now_ms: u64, effects: &mut Effects<P>) {
        if now_ms < self.import_retry_at_ms {
            return;
        }
        loop {
            let Some(key) = self.first_not_importing() else {
                return;
            };
            let Some(batch) = self.batches.get_mut(&key) else {
                return;
            };
            if !batch.is_complete() || !self.direction.is_next(batch.start(), batch.end()) {
                return;
            }
            let (Some(first), Some(last)) = (batch.blocks().first(), batch.blocks().last()) else {
                return;
            };
            if let Err(fault) = self.direction.check_boundary(first, last) {
                if fault.diverged && !self.direction.boundary_settled() {
                    // It may be the offered blocks below it that are wrong: wait for the store.
                    return;
                }
                let blamed = if fault.blame_top {
                    batch.top_supplier()
                } else {
                    batch.supplier_of(0)
                }
                .cloned();
                if let (true, Some(peer)) = (fault.diverged, blamed.as_ref())
                    && self.direction.diverged(peer)
                {
                    // The direction moved its boundary: every batch is cut afresh.
                    effects.forgotten.extend(self.clear());
                    return;
                }
                let Some(batch) = self.batches.get_mut(&key) else {
                    return;
                };
                // A peer whose fork is not searched is not asked for this batch again.
                let exclude = fault.exclude || fault.diverged;
                if let Err(error) =
                    batch.link_failed(blamed.as_ref(), exclude, now_ms, ctx.config, ctx.jitter)
                {
                    refused(error);
                }
                if let (Some(peer), Some((action, reason))) = (blamed, fault.charge) {
                    effects.charge(peer, action, reason);
                }
                return;
            }
            let id = ImportId(*ctx.next_import);
            *ctx.next_import += 1;
            if let Err(error) = batch.import_started(id) {
                refused(error);
                return;
            }
            let blocks = batch.blocks().to_vec();
            if let (Some(first), Some(last)) = (blocks.first(), blocks.last()) {
                self.direction.offered(first, last);
            }
            effects.imports.push((id, key, blocks));
        }
    }

    /// Import `id` of the batch keyed `key` is confirmed.
    pub(crate) fn imported(&mut self, key: Height, id: ImportId, effects: &mut Effects<P>) {
        let Some(batch) = self.batches.get_mut(&key) else {
            return;
        };
        if let Err(error) = batch.imported(id) {
            refused(error);
            return;
        }
        let Some(done) = self.batches.remove(&key) else {
            return;
        };
        self.direction.confirmed(done.blocks(), effects);
        effects.useful.extend(done.all_suppliers());
        effects.progress = true;
    }

    /// Import `id` of the batch keyed `key` failed. A block the store rejected charges its
    /// supplier and the batch is fetched again (preferably elsewhere); every import not confirmed
    /// is forgotten and offered again from the confirmed end, after a delay when the failure was
    /// local.
    pub(crate) fn import_failed(
        &mut self,
        ctx: &mut Ctx,
        key: Option<Height>,
        error: &ImportError,
        now_ms: u64,
        effects: &mut Effects<P>,
    ) {
        let delay = match error {
            ImportError::Rejected { height, .. } => {
                if let Some(key) = key {
                    self.rejected(ctx, key, *height, now_ms, effects);
                }
                0
            }
            ImportError::DoesNotLink { .. } | ImportError::SideChain { .. } | ImportError::Local(_) => {
                ctx.jitter.stretch(ctx.config.local_retry_ms)
            }
        };
        self.roll_back(now_ms.saturating_add(delay), effects);
    }

    fn rejected(
        &mut self,
        ctx: &mut Ctx,
        key: Height,
        height: Height,
        now_ms: u64,
        effects: &mut Effects<P>,
    ) {
        let Some(batch) = self.batches.get_mut(&key) else {
            return;
        };
        // Charged only when the store names a block of the batch; either way the batch backs
        // off and is fetched again, preferably from someone else.
        let supplier = batch.supplier_at(height).cloned();
        let blamed = supplier.clone().or_else(|| batch.supplier_of(0).cloned());
        if let Some(id) = batch.import_id() {
            effects.forgotten.push(id);
        }
        if let Err(error) = batch.import_rejected(blamed.as_ref(), now_ms, ctx.config, ctx.jitter) {
            refused(error);
        }
        if let Some(peer) = supplier {
            effects.charge(peer, PeerAction::InvalidData, "block rejected by the store");
        }
    }

    /// Imports not yet confirmed are forgotten: their batches wait to be offered again from the
    /// confirmed end, from `retry_at_ms` on.
    pub(crate) fn roll_back(&mut self, retry_at_ms: u64, effects: &mut Effects<P>) {
        for batch in self.batches.values_mut() {
            if let Some(id) = batch.import_id() {
                effects.forgotten.push(id);
                if let Err(error) = batch.import_failed() {
                    refused(error);
                }
            }
        }
        self.direction.rolled_back();
        self.import_retry_at_ms = retry_at_ms;
    }
}
