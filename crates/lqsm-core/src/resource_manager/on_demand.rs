//! Queues created on demand from a parent's template (`root.users.*`), as YARN's
//! auto-created leaf queues: the first submit to `root.users.alice` creates the leaf with
//! the template's settings; once it has held no unfinished job for the template's idle
//! time it is removed, and what it counted stays readable as a retired queue for the
//! retention (a later submit creates it again, its counters carried on).

use super::ResourceManager;
use crate::effects::Record;
use crate::ids::{QueueId, Timestamp};
use crate::queues::{QueueError, QueuePath, QueueStats, RetiredQueue};
use crate::recovery::QueueRecord;
use crate::timers::Timer;
use std::time::Duration;

/// A queue a submission created, kept so that a refused submission can take it back.
#[derive(Debug)]
pub(crate) struct MadeOnDemand {
    id: QueueId,
    /// The retired queue of the same path whose counters it carried on.
    retired: Option<RetiredQueue>,
}

impl ResourceManager {
    /// Creates the leaf `path` from its parent's template when it does not exist and the
    /// parent has one; `None` when there is nothing to create (the submission's own
    /// checks then say what is wrong with the path, if anything).
    pub(crate) fn create_on_demand(
        &mut self,
        path: &str,
        now: Timestamp,
    ) -> Result<Option<MadeOnDemand>, QueueError> {
        let Ok(path) = QueuePath::parse(path) else {
            return Ok(None);
        };
        if self.queue_ids.contains_key(&path) {
            return Ok(None);
        }
        let Some(parent) = path.parent().and_then(|p| self.queue_ids.get(&p).copied()) else {
            return Ok(None);
        };
        let parent_node = self.node(parent);
        let Some(template) = parent_node.config.template.as_deref() else {
            return Ok(None);
        };
        let made = parent_node
            .children
            .iter()
            .filter(|child| self.node(**child).on_demand)
            .count();
        if made >= template.max_queues as usize {
            return Err(QueueError::OnDemandLimit {
                parent: parent_node.path.clone(),
                max: template.max_queues,
            });
        }
        let mut config = template.child.clone();
        let mut note = None;
        if config.capacity > 0.0
            && self
                .check_sibling_capacity(parent, None, config.capacity)
                .is_err()
        {
            let mut why = format!(
                "created with a guarantee of 0: the template's {}% would take the guarantees \
                 under `{}` to {}%, past 100%",
                config.capacity,
                parent_node.path,
                parent_node.children_capacity + config.capacity
            );
            if config.user_limit_factor.take().is_some() {
                why.push_str("; without the template's user_limit_factor, which needs one");
            }
            note = Some(why);
            config.capacity = 0.0;
        }
        let id = self.create_queue(path.as_str(), config)?;
        let retired = self.retired_queues.remove(&path);
        if retired.is_some() {
            self.effects.records.push(Record::QueueRetired(path));
        }
        let node = self.node_mut(id);
        node.on_demand = true;
        node.note = note;
        if let Some(before) = &retired {
            node.stats = QueueStats {
                pending: 0,
                ..before.stats
            };
        }
        self.mark_idle(id, now);
        Ok(Some(MadeOnDemand { id, retired }))
    }

    /// Takes back a queue created for a submission that was then refused, so that bad
    /// input leaves no queue behind.
    pub(crate) fn undo_on_demand(&mut self, made: MadeOnDemand) {
        let path = self.node(made.id).path.clone();
        self.unlink_queue(made.id);
        if let Some(retired) = made.retired {
            self.retired_queues.insert(path.clone(), retired);
        }
        self.effects.records.push(Record::QueueRetired(path));
    }

    /// How long a queue created on demand may stay idle: its parent's template's idle
    /// time; `None` once the parent has no template (its children then stay).
    fn idle_removal_of(&self, id: QueueId) -> Option<Duration> {
        let parent = self.node(id).parent?;
        Some(self.node(parent).config.template.as_ref()?.idle_removal)
    }

    /// Starts the idle time of a queue created on demand that holds no unfinished job.
    pub(crate) fn mark_idle(&mut self, id: QueueId, now: Timestamp) {
        let node = self.node(id);
        if !node.on_demand || node.unfinished > 0 {
            return;
        }
        let Some(idle) = self.idle_removal_of(id) else {
            return;
        };
        self.node_mut(id).idle_since = Some(now);
        self.timers.set(now.after(idle), Timer::QueueIdle(id));
    }

    pub(crate) fn queue_idle_due(&mut self, id: QueueId, now: Timestamp) {
        let Some(Some(node)) = self.queues.get(id.0 as usize) else {
            return;
        };
        if !node.on_demand || node.unfinished > 0 || !node.is_leaf() {
            return;
        }
        let (Some(since), Some(idle)) = (node.idle_since, self.idle_removal_of(id)) else {
            return;
        };
        let due = since.after(idle);
        if due > now {
            // The template's idle time grew since this timer was set.
            self.timers.set(due, Timer::QueueIdle(id));
            return;
        }
        self.retire_queue(id, now);
    }

    /// Removes an idle queue created on demand, keeping its settings and counters.
    fn retire_queue(&mut self, id: QueueId, now: Timestamp) {
        let node = self.node(id);
        let path = node.path.clone();
        let retired = RetiredQueue {
            config: node.config.clone(),
            stats: QueueStats {
                pending: 0,
                ..node.stats
            },
            removed_at: now,
            note: node.note.clone(),
        };
        self.close_broadcasts_into(&path);
        self.unlink_queue(id);
        self.retired_queues.insert(path.clone(), retired);
        self.effects.records.push(Record::QueueRetired(path));
        self.timers
            .set(now.after(self.config.retention), Timer::ForgetRetiredQueues);
    }

    pub(crate) fn forget_retired_queues(&mut self, now: Timestamp) {
        let retention = self.config.retention;
        let expired: Vec<QueuePath> = self
            .retired_queues
            .iter()
            .filter(|(_, retired)| retired.removed_at.after(retention) <= now)
            .map(|(path, _)| path.clone())
            .collect();
        for path in expired {
            self.retired_queues.remove(&path);
            self.effects.records.push(Record::QueueRetired(path));
        }
    }

    /// A queue created on demand and removed since, while its retention lasts.
    pub fn retired_queue(&self, path: &str) -> Option<&RetiredQueue> {
        let path = QueuePath::parse(path).ok()?;
        self.retired_queues.get(&path)
    }

    /// Every retired queue, by path.
    pub fn retired_queues(&self) -> impl Iterator<Item = (&QueuePath, &RetiredQueue)> {
        self.retired_queues.iter()
    }

    /// What the store keeps under a queue's path: the live queue's record, a retired
    /// queue's, or nothing (the record is deleted). The shell writes this for every path
    /// a batch's queue records name.
    pub fn durable_queue(&self, path: &QueuePath) -> Option<QueueRecord> {
        if let Some(id) = self.queue_ids.get(path) {
            return self.queue_record(*id);
        }
        let retired = self.retired_queues.get(path)?;
        Some(QueueRecord {
            path: path.clone(),
            config: retired.config.clone(),
            state: crate::queues::QueueState::Running,
            counters: Some(retired.stats),
            on_demand: true,
            note: retired.note.clone(),
            removed_at: Some(retired.removed_at),
        })
    }

    /// Takes back a retired queue's record at a restart.
    pub(crate) fn restore_retired(&mut self, record: QueueRecord, removed_at: Timestamp) {
        self.timers.set(
            removed_at.after(self.config.retention),
            Timer::ForgetRetiredQueues,
        );
        self.retired_queues.insert(
            record.path,
            RetiredQueue {
                config: record.config,
                stats: record.counters.unwrap_or_default(),
                removed_at,
                note: record.note,
            },
        );
    }
}
