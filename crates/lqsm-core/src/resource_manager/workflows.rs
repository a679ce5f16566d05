//! Jobs that wait for others: a job's parents, the release of its dependents the moment
//! the last parent ends, the cancellation of those whose parent failed, and workflows
//! (a whole graph of jobs submitted at once).
//!
//! A dependent is `Pending` and `Waiting::Blocked` while a parent has not ended, counted
//! in `blocked` (parents still running). Each parent lists its dependents in `children`
//! until it is purged; a parent is not purged while a dependent has not ended, so its
//! result stays readable for as long as a dependent may need it, whatever the retention.

use super::ResourceManager;
use crate::ids::{JobId, Timestamp};
use crate::jobs::{JobKey, JobState, RunWhen, SubmitError, SubmitRequest, Waiting, WorkflowNode};
use crate::timers::Timer;
use std::collections::HashMap;
use thiserror::Error;

/// Most jobs one workflow may hold.
pub const MAX_WORKFLOW_NODES: usize = 20_000;

/// Where a new dependent stands with its parents.
pub(crate) enum Parents {
    /// None, or every one ended as the dependent needs: it may run.
    Ended,
    /// Some have not ended: it waits.
    Waiting,
    /// One ended in a way the dependent cannot run after: the reason to cancel it.
    Failed(String),
}

/// A refused workflow: nothing of it was created.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum WorkflowError {
    /// No node, or more than [`MAX_WORKFLOW_NODES`].
    #[error("nodes: a workflow holds 1 to {MAX_WORKFLOW_NODES} jobs, this one {0}")]
    Size(usize),
    /// A node's parents form a cycle through it.
    #[error("nodes[{index}].after: `{name}` waits for itself through {path}")]
    Cycle {
        /// The node's position in the request.
        index: usize,
        /// Its name.
        name: String,
        /// The cycle, as node names joined by ` -> `.
        path: String,
    },
    /// A parent is neither in the workflow nor an existing job.
    #[error("nodes[{index}].after: job {parent} does not exist (or has passed its retention)")]
    UnknownParent {
        /// The node's position in the request.
        index: usize,
        /// The parent named.
        parent: JobId,
    },
    /// One node was refused.
    #[error("nodes[{index}]: {error}")]
    Node {
        /// Its position in the request.
        index: usize,
        /// Why.
        error: SubmitError,
    },
}

impl WorkflowError {
    /// The refused node's position, when one node is to blame.
    pub fn index(&self) -> Option<usize> {
        match self {
            WorkflowError::Size(_) => None,
            WorkflowError::Cycle { index, .. }
            | WorkflowError::UnknownParent { index, .. }
            | WorkflowError::Node { index, .. } => Some(*index),
        }
    }
}

impl ResourceManager {
    /// Takes in a whole graph of jobs at once, or none of it: each node is checked as a
    /// submission is, the parents it names must be nodes of the request or jobs held,
    /// and no node may wait for itself. Nodes are taken in parents-first order; the
    /// answer lists their ids in request order.
    pub fn submit_workflow(
        &mut self,
        nodes: Vec<SubmitRequest>,
        now: Timestamp,
    ) -> Result<Vec<JobId>, WorkflowError> {
        if nodes.is_empty() || nodes.len() > MAX_WORKFLOW_NODES {
            return Err(WorkflowError::Size(nodes.len()));
        }
        let order = self.parents_first(&nodes)?;
        let ids: Vec<JobId> = nodes.iter().map(|n| n.id).collect();
        // Queues the nodes name that their parents create on demand; taken back if the
        // graph is refused, so that a refused request leaves nothing behind.
        let mut made = Vec::new();
        let checked = self.check_workflow(nodes, now, &mut made);
        let checked = match checked {
            Ok(checked) => checked,
            Err(refused) => {
                for queue in made.into_iter().rev() {
                    self.undo_on_demand(queue);
                }
                return Err(refused);
            }
        };
        let mut checked = checked;
        for index in order {
            let job = checked[index].take().expect("each node is taken once");
            self.insert_job(*job, now);
        }
        Ok(ids)
    }

    /// Every node of a workflow checked as a submission; queues created on demand for
    /// them are added to `made`.
    fn check_workflow(
        &mut self,
        nodes: Vec<SubmitRequest>,
        now: Timestamp,
        made: &mut Vec<super::on_demand::MadeOnDemand>,
    ) -> Result<Vec<Option<Box<crate::jobs::Job>>>, WorkflowError> {
        let mut checked = Vec::with_capacity(nodes.len());
        let mut pending_by_queue: HashMap<String, u64> = HashMap::new();
        for (index, node) in nodes.into_iter().enumerate() {
            match self.create_on_demand(&node.queue, now) {
                Ok(Some(queue)) => made.push(queue),
                Ok(None) => {}
                Err(error) => {
                    return Err(WorkflowError::Node {
                        index,
                        error: error.into(),
                    });
                }
            }
            let also = pending_by_queue.entry(node.queue.clone()).or_default();
            let job = match self.check_submission(node, now, *also) {
                Ok(super::jobs::Checked::New(job)) => job,
                Ok(super::jobs::Checked::Existing(id)) => {
                    return Err(WorkflowError::Node {
                        index,
                        error: SubmitError::DuplicateId(id),
                    });
                }
                Err(error) => return Err(WorkflowError::Node { index, error }),
            };
            *also += 1;
            checked.push(Some(job));
        }
        Ok(checked)
    }

    /// The nodes' positions, each after its parents in the request; refuses a cycle, a
    /// parent that is neither a node nor a held job, and two nodes with one id or name.
    fn parents_first(&self, nodes: &[SubmitRequest]) -> Result<Vec<usize>, WorkflowError> {
        let mut position = HashMap::with_capacity(nodes.len());
        let mut names = std::collections::HashSet::with_capacity(nodes.len());
        let mut keys = std::collections::HashSet::new();
        for (index, node) in nodes.iter().enumerate() {
            let duplicate = |field: &str, reason: String| WorkflowError::Node {
                index,
                error: SubmitError::InvalidField {
                    field: field.into(),
                    reason,
                },
            };
            if position.insert(node.id, index).is_some() || self.job_ids.contains_key(&node.id) {
                return Err(duplicate("id", format!("job id {} is taken", node.id)));
            }
            if let Some(key) = &node.idempotency_key
                && !keys.insert((node.queue.as_str(), key.as_str()))
            {
                return Err(duplicate(
                    "idempotency_key",
                    format!("`{key}` is given to two nodes of queue `{}`", node.queue),
                ));
            }
            if let Some(workflow) = &node.workflow
                && !names.insert(workflow.name.as_str())
            {
                return Err(duplicate(
                    "name",
                    format!("`{}` names two nodes", workflow.name),
                ));
            }
        }
        // Kahn's algorithm over the parents inside the request.
        let mut waiting_for = vec![0usize; nodes.len()];
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (index, node) in nodes.iter().enumerate() {
            for parent in node.depends.iter().flat_map(|d| &d.parents) {
                match position.get(parent) {
                    Some(&p) => {
                        waiting_for[index] += 1;
                        dependents[p].push(index);
                    }
                    None if self.job_ids.contains_key(parent) => {}
                    None => {
                        return Err(WorkflowError::UnknownParent {
                            index,
                            parent: *parent,
                        });
                    }
                }
            }
        }
        let mut order: Vec<usize> = (0..nodes.len()).filter(|i| waiting_for[*i] == 0).collect();
        let mut next = 0;
        while let Some(&at) = order.get(next) {
            next += 1;
            for &d in &dependents[at] {
                waiting_for[d] -= 1;
                if waiting_for[d] == 0 {
                    order.push(d);
                }
            }
        }
        if order.len() < nodes.len() {
            let index = (0..nodes.len())
                .find(|i| waiting_for[*i] > 0)
                .expect("some node is left");
            return Err(cycle_through(nodes, &position, &waiting_for, index));
        }
        Ok(order)
    }

    /// Registers a new job with its parents, all of them held: where it stands.
    pub(crate) fn link_parents(&mut self, key: JobKey) -> Parents {
        let Some(depends) = self.jobs[key].spec.depends() else {
            return Parents::Ended;
        };
        let run_when = depends.run_when;
        let parents = depends.parents.clone();
        let mut unmet = 0u32;
        let mut failed = None;
        for parent in parents {
            let Some(&parent_key) = self.job_ids.get(&parent) else {
                // Only a restore can get here (a submission checks its parents are held,
                // and a parent is kept while a dependent has not ended): its outcome is
                // not known, so it cannot have succeeded.
                if run_when == RunWhen::AllSucceeded {
                    failed.get_or_insert_with(|| {
                        format!("dependency_failed: parent job {parent} is no longer held")
                    });
                }
                continue;
            };
            self.children.entry(parent_key).or_default().push(key);
            *self.open_children.entry(parent_key).or_default() += 1;
            let state = self.jobs[parent_key].state;
            if !state.is_terminal() {
                unmet += 1;
            } else if run_when == RunWhen::AllSucceeded && state != JobState::Succeeded {
                failed.get_or_insert_with(|| dependency_failed(parent, state));
            }
        }
        if let Some(reason) = failed {
            return Parents::Failed(reason);
        }
        if unmet == 0 {
            return Parents::Ended;
        }
        self.jobs[key].waiting = Waiting::Blocked;
        self.blocked.insert(key, unmet);
        Parents::Waiting
    }

    /// A job just ended: its blocked dependents are released or cancelled, and the
    /// parents it kept from being purged may go. Dependents cancelled here end in turn;
    /// they are worked through from a list, not by recursion, so a chain of any length
    /// fails through in constant stack.
    pub(crate) fn dependencies_ended(&mut self, key: JobKey, now: Timestamp) {
        if self.jobs[key].spec.depends().is_some() {
            self.parents_may_go(key, now);
        }
        if !self.children.contains_key(&key) {
            return;
        }
        self.ended_parents.push(key);
        if self.ending_parents {
            return;
        }
        self.ending_parents = true;
        while let Some(parent) = self.ended_parents.pop() {
            self.release_children(parent, now);
        }
        self.ending_parents = false;
    }

    fn release_children(&mut self, parent: JobKey, now: Timestamp) {
        let Some(children) = self.children.get(&parent).cloned() else {
            return;
        };
        let (parent_id, state) = (self.jobs[parent].id, self.jobs[parent].state);
        for child in children {
            let Some(unmet) = self.blocked.get_mut(&child) else {
                continue;
            };
            let run_when = self.jobs[child].spec.depends().map(|d| d.run_when);
            if state != JobState::Succeeded && run_when == Some(RunWhen::AllSucceeded) {
                self.cancel_key(child, &dependency_failed(parent_id, state), now);
                continue;
            }
            *unmet -= 1;
            if *unmet == 0 {
                self.blocked.remove(&child);
                self.unblock(child, now);
            }
        }
    }

    /// A dependent whose parents all ended as it needs: ready, or delayed to its ETA.
    fn unblock(&mut self, key: JobKey, now: Timestamp) {
        let job = &mut self.jobs[key];
        job.waiting = Waiting::Not;
        match job.not_before.filter(|t| *t > now) {
            Some(at) => self.timers.set(at, Timer::Release(key)),
            None => self.make_ready(key, now, false),
        }
    }

    /// A dependent ended: each of its parents counts one open dependent less, and one
    /// past its retention that no dependent needs any more is purged now.
    fn parents_may_go(&mut self, key: JobKey, now: Timestamp) {
        let Some(depends) = self.jobs[key].spec.depends() else {
            return;
        };
        let parents: Vec<JobKey> = depends
            .parents
            .iter()
            .filter_map(|p| self.job_ids.get(p).copied())
            .collect();
        for parent_key in parents {
            let Some(open) = self.open_children.get_mut(&parent_key) else {
                continue;
            };
            *open -= 1;
            if *open > 0 {
                continue;
            }
            self.open_children.remove(&parent_key);
            if self.jobs[parent_key]
                .finished_at
                .is_some_and(|f| f.after(self.config.retention) <= now)
            {
                self.timers.set(now, Timer::Purge(parent_key));
            }
        }
    }

    /// Whether a dependent of this job has not ended yet (then it is kept, past its
    /// retention if need be).
    pub(crate) fn needed_by_dependents(&self, key: JobKey) -> bool {
        self.open_children.contains_key(&key)
    }

    /// After a restore: every job with parents is linked to them, and each pending one
    /// waits, runs or is cancelled as its parents' states say (held in any order, so
    /// this runs once all are in). Cancellations are written by the next commit.
    pub(crate) fn link_restored(&mut self, dependents: Vec<JobKey>, now: Timestamp) {
        let mut to_settle = Vec::new();
        for key in dependents {
            if self.jobs[key].state == JobState::Pending {
                to_settle.push(key);
                continue;
            }
            // Ended or running: only the purge guard needs the link.
            let parents = self.jobs[key]
                .spec
                .depends()
                .map(|d| d.parents.clone())
                .unwrap_or_default();
            let open = !self.jobs[key].state.is_terminal();
            for parent in parents {
                if let Some(&parent_key) = self.job_ids.get(&parent) {
                    self.children.entry(parent_key).or_default().push(key);
                    if open {
                        *self.open_children.entry(parent_key).or_default() += 1;
                    }
                }
            }
        }
        for key in to_settle {
            match self.link_parents(key) {
                Parents::Ended => self.unblock(key, now),
                Parents::Waiting => {}
                Parents::Failed(reason) => self.cancel_key(key, &reason, now),
            }
        }
    }

    /// How many parents a blocked job still waits for (`None` when it waits for none).
    pub fn waiting_for_parents(&self, id: JobId) -> Option<u32> {
        self.blocked.get(self.job_ids.get(&id)?).copied()
    }
}

fn dependency_failed(parent: JobId, state: JobState) -> String {
    format!("dependency_failed: parent job {parent} {state}")
}

/// The error for a cycle through node `start` (one that is left waiting).
fn cycle_through(
    nodes: &[SubmitRequest],
    position: &HashMap<JobId, usize>,
    waiting_for: &[usize],
    start: usize,
) -> WorkflowError {
    let name = |i: usize| {
        nodes[i]
            .workflow
            .as_ref()
            .map_or_else(|| nodes[i].id.to_string(), |w| w.name.clone())
    };
    // Walk parents that are still waiting: every such node has one, so the walk
    // reaches a node it has seen, and the part from there on is a cycle.
    let mut seen = HashMap::new();
    let mut path = Vec::new();
    let mut at = start;
    loop {
        if let Some(&first) = seen.get(&at) {
            let cycle: Vec<usize> = path[first..].to_vec();
            let names: Vec<String> = cycle
                .iter()
                .chain(std::iter::once(&at))
                .map(|i| name(*i))
                .collect();
            return WorkflowError::Cycle {
                index: at,
                name: name(at),
                path: names.join(" -> "),
            };
        }
        seen.insert(at, path.len());
        path.push(at);
        at = nodes[at]
            .depends
            .iter()
            .flat_map(|d| &d.parents)
            .filter_map(|p| position.get(p).copied())
            .find(|p| waiting_for[*p] > 0)
            .expect("a node left waiting has a parent left waiting");
    }
}

/// A broadcast that also reaches workers registering after it: what it runs, until when,
/// and the workers it has reached.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpenBroadcast {
    /// Its id (its workflow's).
    pub id: uuid::Uuid,
    /// The job it runs on each worker (its id and pin are each job's own).
    pub template: SubmitRequest,
    /// Open until then (the template's expiry); until cancelled when `None`.
    pub until: Option<Timestamp>,
    /// The workers it has reached.
    pub workers: std::collections::BTreeSet<crate::ids::WorkerId>,
}

/// A broadcast's job on one worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastJob {
    /// The worker.
    pub worker: crate::ids::WorkerId,
    /// Its node's name in the broadcast's workflow.
    pub name: String,
    /// The job.
    pub job: JobId,
}

/// The name of a broadcast's node on a worker: its name and the end of its id (names
/// need not be unique; ids are).
fn broadcast_node_name(worker: &crate::workers::Worker) -> String {
    let id = worker.id.0.simple().to_string();
    format!("{} ({})", worker.name, &id[id.len() - 8..])
}

/// A broadcast's job on `worker`: the template, with its own id, pin and node name.
fn broadcast_node(
    template: &SubmitRequest,
    broadcast: uuid::Uuid,
    worker: crate::ids::WorkerId,
    name: String,
    now: Timestamp,
) -> SubmitRequest {
    let mut node = template.clone();
    node.id = broadcast_job_id(broadcast, worker, now);
    node.pinned = Some(worker);
    node.workflow = Some(WorkflowNode {
        workflow: broadcast,
        name,
    });
    node
}

/// The id of a broadcast's job on a worker: a UUIDv7 of `now` whose other bits come
/// from the broadcast and the worker, so the same broadcast names the same jobs.
fn broadcast_job_id(broadcast: uuid::Uuid, worker: crate::ids::WorkerId, now: Timestamp) -> JobId {
    let name = uuid::Uuid::new_v5(&broadcast, worker.0.as_bytes());
    let mut random = [0u8; 10];
    random.copy_from_slice(&name.as_bytes()[6..16]);
    JobId(uuid::Builder::from_unix_timestamp_millis(now.0, &random).into_uuid())
}

impl ResourceManager {
    /// A broadcast (Celery's broadcast queue): one job per active worker that matches
    /// `template` (its selector, its handler or commands, its resources), each pinned to
    /// its worker, together a workflow of id `broadcast` that succeeds when all of them
    /// do. Refused when no worker matches.
    pub fn submit_broadcast(
        &mut self,
        template: SubmitRequest,
        broadcast: uuid::Uuid,
        now: Timestamp,
    ) -> Result<Vec<BroadcastJob>, WorkflowError> {
        self.broadcast(template, broadcast, false, now)
    }

    /// [`Self::submit_broadcast`], and with `new_workers` also one job on each matching
    /// worker that registers afterwards, until the template's expiry or a cancel of the
    /// broadcast.
    pub fn broadcast(
        &mut self,
        template: SubmitRequest,
        broadcast: uuid::Uuid,
        new_workers: bool,
        now: Timestamp,
    ) -> Result<Vec<BroadcastJob>, WorkflowError> {
        let kept = new_workers.then(|| template.clone());
        let node_error = |error| WorkflowError::Node { index: 0, error };
        template.validate().map_err(node_error)?;
        let (constraint, request) = self
            .broadcast_needs(&template)
            .map_err(|e| node_error(e.into()))?;
        let mut targets: Vec<&crate::workers::Worker> = self
            .workers
            .values()
            .filter(|w| {
                w.state == crate::workers::WorkerState::Active
                    && self.index.class_accepts(w.class, constraint)
                    && request.fits_in(&w.capacity)
            })
            .collect();
        if targets.is_empty() {
            return Err(node_error(SubmitError::InvalidField {
                field: "selector".into(),
                reason:
                    "no active worker matches the broadcast (its selector, handler and resources)"
                        .into(),
            }));
        }
        targets.sort_by_key(|w| w.id);
        let nodes: Vec<SubmitRequest> = targets
            .iter()
            .map(|w| broadcast_node(&template, broadcast, w.id, broadcast_node_name(w), now))
            .collect();
        let targets: Vec<(crate::ids::WorkerId, String)> = targets
            .iter()
            .map(|w| (w.id, broadcast_node_name(w)))
            .collect();
        let ids = self.submit_workflow(nodes, now)?;
        if let Some(template) = kept {
            if let Some(until) = template.expires_at {
                self.timers.set(until, Timer::BroadcastUntil(broadcast));
            }
            self.open_broadcasts.insert(
                broadcast,
                OpenBroadcast {
                    id: broadcast,
                    until: template.expires_at,
                    template,
                    workers: targets.iter().map(|(w, _)| *w).collect(),
                },
            );
            self.effects
                .records
                .push(crate::effects::Record::Broadcast(broadcast));
        }
        Ok(targets
            .into_iter()
            .zip(ids)
            .map(|((worker, name), job)| BroadcastJob { worker, name, job })
            .collect())
    }

    /// The open broadcast of this id, if it is open.
    pub fn open_broadcast(&self, id: uuid::Uuid) -> Option<&OpenBroadcast> {
        self.open_broadcasts.get(&id)
    }

    /// Every open broadcast, by id.
    pub fn open_broadcasts(&self) -> impl Iterator<Item = &OpenBroadcast> {
        self.open_broadcasts.values()
    }

    /// Puts a stored open broadcast back.
    pub(crate) fn restore_broadcast(&mut self, broadcast: OpenBroadcast) {
        if let Some(until) = broadcast.until {
            self.timers.set(until, Timer::BroadcastUntil(broadcast.id));
        }
        self.open_broadcasts.insert(broadcast.id, broadcast);
    }

    /// Closes the open broadcasts whose jobs go to a queue within `path` (it is deleted).
    pub(crate) fn close_broadcasts_into(&mut self, path: &crate::queues::QueuePath) {
        let doomed: Vec<uuid::Uuid> = self
            .open_broadcasts
            .values()
            .filter(|b| {
                crate::queues::QueuePath::parse(&b.template.queue).is_ok_and(|q| q.is_within(path))
            })
            .map(|b| b.id)
            .collect();
        for id in doomed {
            self.close_broadcast(id);
        }
    }

    /// Closes broadcast `id` to workers that join later (its cancel).
    pub(crate) fn close_broadcast(&mut self, id: uuid::Uuid) {
        if self.open_broadcasts.remove(&id).is_some() {
            self.effects
                .records
                .push(crate::effects::Record::Broadcast(id));
        }
    }

    /// A worker registered: each open broadcast it matches and has not reached yet gives
    /// it its job; those past their expiry close.
    pub(crate) fn join_open_broadcasts(
        &mut self,
        worker: crate::workers::WorkerKey,
        now: Timestamp,
    ) {
        if self.open_broadcasts.is_empty() {
            return;
        }
        let expired: Vec<uuid::Uuid> = self
            .open_broadcasts
            .values()
            .filter(|b| b.until.is_some_and(|t| t <= now))
            .map(|b| b.id)
            .collect();
        for id in expired {
            self.close_broadcast(id);
        }
        let w = &self.workers[worker];
        let (worker_id, class, capacity, name) =
            (w.id, w.class, w.capacity.clone(), broadcast_node_name(w));
        let due: Vec<OpenBroadcast> = self
            .open_broadcasts
            .values()
            .filter(|b| !b.workers.contains(&worker_id))
            .cloned()
            .collect();
        for open in due {
            let fits = self
                .broadcast_needs(&open.template)
                .is_ok_and(|(constraint, request)| {
                    self.index.class_accepts(class, constraint) && request.fits_in(&capacity)
                });
            if !fits {
                continue;
            }
            let node = broadcast_node(&open.template, open.id, worker_id, name.clone(), now);
            // A queue stopped or full since refuses it, as it would a submission: this
            // worker is then left out, and the broadcast stays open to others.
            if let Ok(super::jobs::Checked::New(job)) = self.check_submission(node, now, 0) {
                self.insert_job(*job, now);
                if let Some(b) = self.open_broadcasts.get_mut(&open.id) {
                    b.workers.insert(worker_id);
                }
                self.effects
                    .records
                    .push(crate::effects::Record::Broadcast(open.id));
            }
        }
    }

    /// What a broadcast's job needs of a worker: its placement constraint and the
    /// resources it asks for (its queue's default when it names none).
    fn broadcast_needs(
        &mut self,
        template: &SubmitRequest,
    ) -> Result<(crate::ids::ConstraintId, crate::resources::Resources), crate::queues::QueueError>
    {
        let path = crate::queues::QueuePath::parse(&template.queue)?;
        let constraint =
            self.index
                .constraint_for(&template.selector, template.kind.handler(), &path);
        let request = match &template.request {
            Some(request) => request.clone(),
            None => {
                let queue = self.lookup_queue(&template.queue)?;
                self.node(queue)
                    .config
                    .defaults
                    .request_for(&template.kind)
                    .clone()
            }
        };
        Ok((constraint, request))
    }

    /// Cancels the unfinished jobs pinned to a worker that can no longer run them (it
    /// was lost), saying why.
    pub(crate) fn cancel_pinned_to(
        &mut self,
        worker: crate::ids::WorkerId,
        why: &str,
        now: Timestamp,
    ) {
        self.pinned_hold.remove(&worker);
        let Some(keys) = self.pinned_jobs.remove(&worker) else {
            return;
        };
        for key in keys {
            if self
                .jobs
                .get(key)
                .is_some_and(|j| !j.state.is_terminal() && j.spec.pinned() == Some(worker))
            {
                self.cancel_key(key, why, now);
            }
        }
    }
}
