//! Resource vectors: what a worker offers and what a job asks for.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use thiserror::Error;

/// CPU in thousandths of a core (1000 = one core).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millicores(pub u64);

/// Memory in mebibytes.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MiB(pub u64);

/// The name of a custom resource (`licence`, `fpga`): `[a-z0-9_.-]{1,64}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceName(Arc<str>);

/// A custom resource name that breaks the naming rule.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("resource name `{0}` is invalid: use 1 to 64 of a-z, 0-9, `_`, `-`, `.`")]
pub struct InvalidResourceName(pub String);

impl ResourceName {
    /// Checks the naming rule; the built-in names `cpu`, `memory` and `gpu` are refused
    /// because they are not custom resources.
    pub fn new(name: &str) -> Result<Self, InvalidResourceName> {
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
        let reserved = matches!(name, "cpu" | "memory" | "gpu");
        if name.is_empty() || name.len() > 64 || !valid_chars || reserved {
            return Err(InvalidResourceName(name.to_owned()));
        }
        Ok(Self(name.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ResourceName {
    type Error = InvalidResourceName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<ResourceName> for String {
    fn from(n: ResourceName) -> String {
        n.0.to_string()
    }
}

impl fmt::Debug for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resource vector: cpu, memory, gpus and any number of named custom resources.
///
/// Custom resources are kept sorted by name with no zero entries, so two equal
/// vectors compare equal and a vector without custom resources never allocates.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu: Millicores,
    /// Memory in MiB.
    pub memory: MiB,
    /// Whole GPUs.
    pub gpu: u32,
    /// Named custom resources, sorted by name, amounts above zero.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    custom: Vec<(ResourceName, u64)>,
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{cpu: {}m, memory: {}MiB, gpu: {}",
            self.cpu.0, self.memory.0, self.gpu
        )?;
        for (name, amount) in &self.custom {
            write!(f, ", {}: {amount}", name.as_str())?;
        }
        f.write_str("}")
    }
}

/// In the wire's units, for messages people read: `0.05 cpu, 32 MiB, 0 gpu, licence 2`.
impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cpu, {} MiB, {} gpu",
            self.cpu.0 as f64 / 1000.0,
            self.memory.0,
            self.gpu
        )?;
        for (name, amount) in &self.custom {
            write!(f, ", {} {amount}", name.as_str())?;
        }
        Ok(())
    }
}

impl Resources {
    /// A vector of cpu, memory and gpus with no custom resources.
    pub const fn new(cpu: Millicores, memory: MiB, gpu: u32) -> Self {
        Self {
            cpu,
            memory,
            gpu,
            custom: Vec::new(),
        }
    }

    /// Shorthand for tests and examples: whole cores and MiB.
    pub fn cores(cores: u64, memory_mib: u64) -> Self {
        Self::new(Millicores(cores * 1000), MiB(memory_mib), 0)
    }

    /// This vector with custom resource `name` set to `amount` (zero removes it).
    pub fn with_custom(mut self, name: ResourceName, amount: u64) -> Self {
        self.set_custom(name, amount);
        self
    }

    /// Sets custom resource `name` to `amount`; zero removes it.
    pub fn set_custom(&mut self, name: ResourceName, amount: u64) {
        match self.custom.binary_search_by(|(n, _)| n.cmp(&name)) {
            Ok(i) if amount == 0 => {
                self.custom.remove(i);
            }
            Ok(i) => self.custom[i].1 = amount,
            Err(_) if amount == 0 => {}
            Err(i) => self.custom.insert(i, (name, amount)),
        }
    }

    /// The amount of custom resource `name` (zero when absent).
    pub fn custom(&self, name: &str) -> u64 {
        self.custom
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map_or(0, |(_, a)| *a)
    }

    /// The custom resources, sorted by name.
    pub fn customs(&self) -> &[(ResourceName, u64)] {
        &self.custom
    }

    /// True when every component is zero.
    pub fn is_zero(&self) -> bool {
        self.cpu.0 == 0 && self.memory.0 == 0 && self.gpu == 0 && self.custom.is_empty()
    }

    /// True when this request fits inside `available` on every component.
    pub fn fits_in(&self, available: &Resources) -> bool {
        self.cpu <= available.cpu
            && self.memory <= available.memory
            && self.gpu <= available.gpu
            && self
                .custom
                .iter()
                .all(|(name, amount)| *amount <= available.custom(name.as_str()))
    }

    /// Adds `other` component-wise (saturating; amounts here are bounded by worker sizes).
    pub fn add(&mut self, other: &Resources) {
        self.cpu.0 = self.cpu.0.saturating_add(other.cpu.0);
        self.memory.0 = self.memory.0.saturating_add(other.memory.0);
        self.gpu = self.gpu.saturating_add(other.gpu);
        for (name, amount) in &other.custom {
            let current = self.custom(name.as_str());
            self.set_custom(name.clone(), current.saturating_add(*amount));
        }
    }

    /// Subtracts `other` component-wise, stopping at zero. Callers only subtract what
    /// they added, so reaching below zero would be a bookkeeping bug.
    pub fn sub(&mut self, other: &Resources) {
        debug_assert!(other.fits_in(self), "subtracting {other:?} from {self:?}");
        self.saturating_sub(other);
    }

    fn saturating_sub(&mut self, other: &Resources) {
        self.cpu.0 = self.cpu.0.saturating_sub(other.cpu.0);
        self.memory.0 = self.memory.0.saturating_sub(other.memory.0);
        self.gpu = self.gpu.saturating_sub(other.gpu);
        for (name, amount) in &other.custom {
            let current = self.custom(name.as_str());
            self.set_custom(name.clone(), current.saturating_sub(*amount));
        }
    }

    /// `self + other` as a new vector.
    pub fn plus(&self, other: &Resources) -> Resources {
        let mut sum = self.clone();
        sum.add(other);
        sum
    }

    /// `self - other` as a new vector (saturating at zero per component).
    pub fn minus(&self, other: &Resources) -> Resources {
        let mut out = self.clone();
        out.saturating_sub(other);
        out
    }

    /// The dominant share `self + extra` would have, without building the sum.
    pub fn dominant_share_with(&self, extra: &Resources, total: &Resources) -> f64 {
        if self.custom.is_empty() && extra.custom.is_empty() {
            let sum = Resources::new(
                Millicores(self.cpu.0.saturating_add(extra.cpu.0)),
                MiB(self.memory.0.saturating_add(extra.memory.0)),
                self.gpu.saturating_add(extra.gpu),
            );
            return sum.dominant_share(total);
        }
        self.plus(extra).dominant_share(total)
    }

    /// The largest fraction of `total` this vector takes on any one component — the
    /// dominant share of Dominant Resource Fairness. A component that `total` lacks
    /// entirely but this vector needs makes the share infinite.
    pub fn dominant_share(&self, total: &Resources) -> f64 {
        fn share(used: u64, total: u64) -> f64 {
            match (used, total) {
                (0, _) => 0.0,
                (_, 0) => f64::INFINITY,
                (u, t) => u as f64 / t as f64,
            }
        }
        let mut dominant = share(self.cpu.0, total.cpu.0)
            .max(share(self.memory.0, total.memory.0))
            .max(share(u64::from(self.gpu), u64::from(total.gpu)));
        for (name, amount) in &self.custom {
            dominant = dominant.max(share(*amount, total.custom(name.as_str())));
        }
        dominant
    }
}

/// Largest cpu amount accepted in a request or a capacity (about a billion cores), so
/// that sums of many can never overflow.
pub const MAX_CPU_MILLICORES: u64 = 1 << 40;
/// Largest memory amount accepted (a million TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 40;
/// Largest gpu count accepted.
pub const MAX_GPUS: u32 = 1 << 16;
/// Largest amount of a custom resource accepted.
pub const MAX_CUSTOM: u64 = 1 << 40;

/// A resource vector that breaks a rule: the wire name of the bad amount (such as
/// `resources.cpu` or `capacity.custom.licences`) and what is wrong with it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BadAmount {
    /// The wire field.
    pub field: String,
    /// What is wrong, for a person.
    pub reason: String,
}

impl Resources {
    /// Checks the rules every request and capacity obeys: some cpu or memory, and no
    /// amount above its bound. `field` is the wire name of the whole vector
    /// (`resources`, `capacity`, `defaults.resources`); a bad amount is named below
    /// it as the wire names it (`cpu` in cores, `memory_mib`, `gpu`, `custom.NAME`).
    pub fn check(&self, field: &str) -> Result<(), BadAmount> {
        let bad = |part: &str, reason: String| BadAmount {
            field: if part.is_empty() {
                field.to_owned()
            } else {
                format!("{field}.{part}")
            },
            reason,
        };
        if self.cpu.0 == 0 && self.memory.0 == 0 {
            return Err(bad("", "must have some cpu or memory".into()));
        }
        if self.cpu.0 > MAX_CPU_MILLICORES {
            return Err(bad(
                "cpu",
                format!(
                    "{} cores is absurd (at most {})",
                    self.cpu.0 as f64 / 1000.0,
                    MAX_CPU_MILLICORES / 1000
                ),
            ));
        }
        if self.memory.0 > MAX_MEMORY_MIB {
            return Err(bad(
                "memory_mib",
                format!("{} MiB is absurd (at most {MAX_MEMORY_MIB})", self.memory.0),
            ));
        }
        if self.gpu > MAX_GPUS {
            return Err(bad(
                "gpu",
                format!("{} gpus is absurd (at most {MAX_GPUS})", self.gpu),
            ));
        }
        if let Some((name, amount)) = self.customs().iter().find(|(_, a)| *a > MAX_CUSTOM) {
            return Err(bad(
                &format!("custom.{}", name.as_str()),
                format!("{amount} is absurd (at most {MAX_CUSTOM})"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn licence() -> ResourceName {
        ResourceName::new("licence").expect("valid name")
    }

    #[test]
    fn fits_checks_every_component() {
        let worker = Resources::cores(4, 8192).with_custom(licence(), 2);
        assert!(Resources::cores(4, 8192).fits_in(&worker));
        assert!(!Resources::cores(5, 1).fits_in(&worker));
        assert!(!Resources::cores(1, 8193).fits_in(&worker));
        assert!(
            Resources::cores(1, 1)
                .with_custom(licence(), 2)
                .fits_in(&worker)
        );
        assert!(
            !Resources::cores(1, 1)
                .with_custom(licence(), 3)
                .fits_in(&worker)
        );
        let gpu_job = Resources::new(Millicores(1), MiB(1), 1);
        assert!(!gpu_job.fits_in(&worker));
    }

    #[test]
    fn add_and_sub_round_trip_including_custom() {
        let mut used = Resources::default();
        let job = Resources::cores(2, 100).with_custom(licence(), 1);
        used.add(&job);
        used.add(&job);
        assert_eq!(used.custom("licence"), 2);
        used.sub(&job);
        used.sub(&job);
        assert!(used.is_zero(), "{used:?}");
    }

    #[test]
    fn dominant_share_is_the_largest_component_share() {
        let total = Resources::cores(100, 1000);
        assert_eq!(Resources::cores(10, 50).dominant_share(&total), 0.1);
        assert_eq!(Resources::cores(1, 500).dominant_share(&total), 0.5);
        assert_eq!(Resources::default().dominant_share(&total), 0.0);
        let gpu = Resources::new(Millicores(0), MiB(0), 1);
        assert_eq!(gpu.dominant_share(&total), f64::INFINITY);
    }

    #[test]
    fn resource_names_are_validated() {
        assert!(ResourceName::new("fpga.v2").is_ok());
        assert!(ResourceName::new("").is_err());
        assert!(ResourceName::new("Licence").is_err());
        assert!(ResourceName::new("cpu").is_err());
        assert!(ResourceName::new(&"x".repeat(65)).is_err());
    }
}
