//! Periodic schedules in the ResourceManager: creating, pausing, resuming and deleting
//! them, and firing them from the timers (see [`crate::schedules`]).

use super::ResourceManager;
use crate::effects::Record;
use crate::ids::{ScheduleKey, Timestamp};
use crate::jobs::SubmitError;
use crate::schedules::{
    Compiled, Overlap, ScheduleError, ScheduleRecord, ScheduleSpec, check_name, due_times,
    fire_job_id, to_fire,
};
use crate::timers::Timer;

/// A schedule and its compiled trigger.
#[derive(Debug)]
pub(crate) struct ScheduleEntry {
    pub(crate) record: ScheduleRecord,
    pub(crate) compiled: Compiled,
}

/// The tag every job of a schedule carries: `lqsm job list --tag schedule:NAME`.
pub fn schedule_tag(name: &str) -> String {
    format!("schedule:{name}")
}

impl ResourceManager {
    /// Creates a schedule; its first fire is the trigger's first time after `now`.
    pub fn create_schedule(
        &mut self,
        spec: ScheduleSpec,
        now: Timestamp,
    ) -> Result<&ScheduleRecord, ScheduleError> {
        check_name(&spec.name)?;
        if self.schedule_names.contains_key(&spec.name) {
            return Err(ScheduleError::Exists(spec.name));
        }
        let compiled = Compiled::new(&spec.trigger, now)?;
        self.check_template(&spec)?;
        let record = ScheduleRecord {
            next_fire: compiled.next_after(now),
            spec,
            paused: false,
            created_at: now,
            last_fire: None,
            last_job: None,
            last_error: None,
            fired: 0,
        };
        let key = self.insert_schedule(record, compiled);
        let name = self.schedules[key].record.spec.name.clone();
        self.effects.records.push(Record::Schedule(name));
        Ok(&self.schedules[key].record)
    }

    /// The template must make a valid job for an existing leaf queue; its times are the
    /// fire's own.
    fn check_template(&self, spec: &ScheduleSpec) -> Result<(), ScheduleError> {
        let job = &spec.job;
        let in_job = |e: SubmitError| match e {
            SubmitError::InvalidField { field, reason } => ScheduleError::InvalidField {
                field: format!("job.{field}"),
                reason,
            },
            other => ScheduleError::InvalidField {
                field: "job.queue".into(),
                reason: other.to_string(),
            },
        };
        job.validate().map_err(in_job)?;
        let queue = self
            .lookup_queue(&job.queue)
            .map_err(|e| ScheduleError::InvalidField {
                field: "job.queue".into(),
                reason: e.to_string(),
            })?;
        if !self.node(queue).is_leaf() {
            return Err(in_job(SubmitError::NotALeaf(job.queue.clone())));
        }
        for (field, set) in [
            ("job.not_before_ms", job.not_before.is_some()),
            ("job.expires_at_ms", job.expires_at.is_some()),
            ("job.idempotency_key", job.idempotency_key.is_some()),
        ] {
            if set {
                return Err(ScheduleError::InvalidField {
                    field: field.into(),
                    reason: "a schedule's jobs take their times and identity from each fire".into(),
                });
            }
        }
        if job.tags.len() >= 64 {
            return Err(ScheduleError::InvalidField {
                field: "job.tags".into(),
                reason: "at most 63 tags (each job also gets `schedule:NAME`)".into(),
            });
        }
        Ok(())
    }

    fn insert_schedule(&mut self, record: ScheduleRecord, compiled: Compiled) -> ScheduleKey {
        let name = record.spec.name.clone();
        let next = (!record.paused).then_some(record.next_fire).flatten();
        let key = self.schedules.insert(ScheduleEntry { record, compiled });
        self.schedule_names.insert(name, key);
        if let Some(at) = next {
            self.timers.set(at, Timer::Schedule(key));
        }
        key
    }

    /// Replaces a schedule's trigger, template and policies (the schedule named in
    /// `spec`), keeping what it did: its last fire, last job and count. It fires next at
    /// the new trigger's first time after `now` (and after its last fire); an interval
    /// still counts from the schedule's creation.
    pub fn update_schedule(
        &mut self,
        spec: ScheduleSpec,
        now: Timestamp,
    ) -> Result<&ScheduleRecord, ScheduleError> {
        let key = *self
            .schedule_names
            .get(&spec.name)
            .ok_or_else(|| ScheduleError::NotFound(spec.name.clone()))?;
        self.check_template(&spec)?;
        let created_at = self.schedules[key].record.created_at;
        let compiled = Compiled::new(&spec.trigger, created_at)?;
        let entry = &mut self.schedules[key];
        let after = entry.record.last_fire.map_or(now, |last| last.max(now));
        entry.record.next_fire = compiled.next_after(after);
        entry.record.spec = spec;
        entry.compiled = compiled;
        if let (false, Some(at)) = (entry.record.paused, entry.record.next_fire) {
            self.timers.set(at, Timer::Schedule(key));
        }
        let name = entry.record.spec.name.clone();
        self.effects.records.push(Record::Schedule(name));
        Ok(&self.schedules[key].record)
    }

    /// Deletes a schedule; the jobs it made stay.
    pub fn delete_schedule(&mut self, name: &str) -> Result<(), ScheduleError> {
        let key = self
            .schedule_names
            .remove(name)
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
        self.schedules.remove(key);
        self.effects
            .records
            .push(Record::ScheduleDeleted(name.to_owned()));
        Ok(())
    }

    /// Pauses (`true`) or resumes (`false`) a schedule. Resuming fires next at the
    /// trigger's first time after `now`: what came due while paused is not made up.
    pub fn pause_schedule(
        &mut self,
        name: &str,
        paused: bool,
        now: Timestamp,
    ) -> Result<&ScheduleRecord, ScheduleError> {
        let key = *self
            .schedule_names
            .get(name)
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
        let entry = &mut self.schedules[key];
        if entry.record.paused != paused {
            entry.record.paused = paused;
            if !paused {
                entry.record.next_fire = entry.compiled.next_after(now);
                if let Some(at) = entry.record.next_fire {
                    self.timers.set(at, Timer::Schedule(key));
                }
            }
            self.effects.records.push(Record::Schedule(name.to_owned()));
        }
        Ok(&self.schedules[key].record)
    }

    /// A schedule by name.
    pub fn schedule_named(&self, name: &str) -> Option<&ScheduleRecord> {
        let key = self.schedule_names.get(name)?;
        Some(&self.schedules[*key].record)
    }

    /// Every schedule, in name order.
    pub fn schedules(&self) -> impl Iterator<Item = &ScheduleRecord> {
        self.schedule_names
            .values()
            .map(|key| &self.schedules[*key].record)
    }

    /// Puts a stored schedule back; a fire time that passed while no server ran fires at
    /// the next tick, under the schedule's misfire policy.
    pub(crate) fn restore_schedule(&mut self, record: ScheduleRecord) -> Result<(), ScheduleError> {
        let compiled = Compiled::new(&record.spec.trigger, record.created_at)?;
        if self.schedule_names.contains_key(&record.spec.name) {
            return Err(ScheduleError::Exists(record.spec.name));
        }
        self.insert_schedule(record, compiled);
        Ok(())
    }

    /// Fires a schedule whose fire time has come: one job per fire time chosen by the
    /// misfire policy (on-time fires always), none for a time already handled.
    pub(crate) fn fire_schedule(&mut self, key: ScheduleKey, now: Timestamp) {
        let Some(entry) = self.schedules.get(key) else {
            return;
        };
        let record = &entry.record;
        let Some(first) = record.next_fire.filter(|t| *t <= now && !record.paused) else {
            return;
        };
        let (due, next) = due_times(&entry.compiled, first, now);
        let chosen = to_fire(&due, record.spec.misfire, now);
        let name = record.spec.name.clone();
        let overlap = record.spec.overlap;
        // What the fires change, written back once they are done (submitting needs the
        // whole core).
        let (mut last_fire, mut last_job, mut last_error, mut fired) = (
            record.last_fire,
            record.last_job,
            record.last_error.clone(),
            record.fired,
        );
        for fire in chosen {
            if last_fire.is_some_and(|last| fire <= last) {
                continue;
            }
            last_fire = Some(fire);
            let previous_runs = overlap == Overlap::Skip
                && last_job
                    .and_then(|id| self.job(id))
                    .is_some_and(|job| !job.state.is_terminal());
            if previous_runs {
                last_error = Some(format!(
                    "the fire at {} ms was skipped: the previous run is still running (overlap = skip)",
                    fire.0
                ));
                continue;
            }
            let mut job = self.schedules[key].record.spec.job.clone();
            job.id = fire_job_id(&name, fire);
            job.tags.push(schedule_tag(&name));
            match self.submit(job, now) {
                Ok(submitted) => {
                    last_job = Some(submitted.id());
                    last_error = None;
                    fired += 1;
                }
                Err(e) => {
                    last_error = Some(format!("the fire at {} ms made no job: {e}", fire.0));
                }
            }
        }
        // Missed times the policy did not fire are handled too: never fired later.
        if let Some(last_due) = due.last() {
            last_fire = Some(last_fire.map_or(*last_due, |l| l.max(*last_due)));
        }
        if let Some(at) = next {
            self.timers.set(at, Timer::Schedule(key));
        }
        let record = &mut self.schedules[key].record;
        record.last_fire = last_fire;
        record.last_job = last_job;
        record.last_error = last_error;
        record.fired = fired;
        record.next_fire = next;
        self.effects.records.push(Record::Schedule(name));
    }
}
