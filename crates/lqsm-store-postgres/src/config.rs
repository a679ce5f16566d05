//! Where the database is and how to reach it: a URL, with the secret parts (password,
//! TLS mode) allowed to come from a file or the environment instead.

use std::path::PathBuf;
use std::str::FromStr;

use crate::PostgresError;

/// How the connection to PostgreSQL is encrypted, as libpq's `sslmode` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, plain otherwise (libpq's default).
    Prefer,
    /// TLS or no connection. The server's certificate is checked against
    /// [`PostgresOptions::ssl_root_cert`] when one is given (as libpq does when a root
    /// certificate exists), and not checked otherwise.
    Require,
}

impl FromStr for SslMode {
    type Err = PostgresError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            other => Err(PostgresError::Config(format!(
                "sslmode `{other}` is not one this build knows; use disable, prefer or require \
                 (with ssl_root_cert to check the server's certificate)"
            ))),
        }
    }
}

/// How to reach the database and where in it LQSM keeps its tables.
///
/// Precedence, for each secret: what the URL says, then the option set here, then the
/// environment (`PGPASSWORD`, `PGSSLMODE`, `PGUSER`, as libpq reads them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// A libpq connection string, as a URL (`postgresql://user@host:5432/db?sslmode=require`)
    /// or as `key=value` pairs (`host=db1 user=lqsm dbname=lqsm`).
    pub url: String,
    /// The schema LQSM's tables live in; created if missing. Lower-case letters, digits and
    /// `_` only, so that it never needs quoting.
    pub schema: String,
    /// A file holding the password (one line; a trailing newline is ignored), used when the
    /// URL has none. Keeps the secret out of the configuration file.
    pub password_file: Option<PathBuf>,
    /// The TLS mode, used when the URL has no `sslmode`.
    pub ssl_mode: Option<SslMode>,
    /// A PEM file of the certificate authorities to check the server's certificate against.
    pub ssl_root_cert: Option<PathBuf>,
    /// The most connections this store opens at once; more callers wait for one to be free.
    pub max_connections: usize,
}

/// The schema LQSM uses unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "lqsm";

impl PostgresOptions {
    /// Options for `url` with the defaults: schema `lqsm`, 8 connections, password and TLS
    /// mode from the URL or the environment.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_string(),
            password_file: None,
            ssl_mode: None,
            ssl_root_cert: None,
            max_connections: 8,
        }
    }

    /// The same options in another schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The driver's configuration and the TLS mode, with the gaps of the URL filled from
    /// these options and then from `env` (the process environment in production; a map in
    /// tests, since changing the environment of a running test process is unsound).
    pub(crate) fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Resolved, PostgresError> {
        check_schema_name(&self.schema)?;
        if self.max_connections == 0 {
            return Err(PostgresError::Config(
                "max_connections is 0; a store needs at least one connection".to_string(),
            ));
        }
        let mut config = postgres::Config::from_str(&self.url).map_err(|e| {
            PostgresError::Config(format!(
                "the PostgreSQL URL cannot be read ({e}); write it as \
                 postgresql://user@host:5432/database"
            ))
        })?;
        if config.get_user().is_none() {
            let user = env("PGUSER").or_else(|| env("USER")).ok_or_else(|| {
                PostgresError::Config(
                    "the PostgreSQL URL names no user and neither PGUSER nor USER is set; \
                     write it as postgresql://user@host/database"
                        .to_string(),
                )
            })?;
            config.user(&user);
        }
        if config.get_password().is_none() {
            if let Some(file) = &self.password_file {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    PostgresError::Config(format!(
                        "the password file `{}` cannot be read ({e}); check its path and that \
                         this user may read it",
                        file.display()
                    ))
                })?;
                config.password(text.trim_end_matches(['\r', '\n']));
            } else if let Some(password) = env("PGPASSWORD") {
                config.password(password);
            }
        }
        let ssl_mode = if mentions_ssl_mode(&self.url) {
            match config.get_ssl_mode() {
                postgres::config::SslMode::Disable => SslMode::Disable,
                postgres::config::SslMode::Require => SslMode::Require,
                _ => SslMode::Prefer,
            }
        } else if let Some(mode) = self.ssl_mode {
            mode
        } else if let Some(mode) = env("PGSSLMODE") {
            mode.parse()?
        } else {
            SslMode::Prefer
        };
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require => postgres::config::SslMode::Require,
        });
        // Every connection works in LQSM's schema, so that the SQL names tables unqualified
        // and one database can hold several LQSM clusters (or test runs) side by side.
        //
        // Every statement LQSM sends is meant to walk an index (a commit touches 1,000 rows of
        // millions; a listing reads a page). Prepared once per connection, a statement keeps
        // the plan made when its tables were small, and that plan scans them whole: measured,
        // commits of 1,000 new jobs ran at 8,000 jobs/s over the first 100,000 jobs, 100 ms
        // a commit (on average) in a sequential scan of the tag table. Hence no sequential scans, and no JIT
        // (which the penalty's huge costs would trigger, 90 ms of compiling per statement).
        // A server paused mid-commit (SIGSTOP, a frozen VM) would hold the lease row's lock
        // for as long as it is paused, and no other server could take the lease over:
        // PostgreSQL ends a session idle inside a transaction after
        // IDLE_IN_TRANSACTION_MS, which releases it. A server never idles inside one: each
        // commit is sent whole.
        config.options(&format!(
            "-c search_path={} -c enable_seqscan=off -c jit=off -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}",
            self.schema
        ));
        // A database that stops answering (a network partition, a crashed host) must fail
        // the calls waiting on it within seconds, not hang them: the leader then steps
        // down and another server, or this one later, takes over. Settings in the URL win.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(std::time::Duration::from_secs(10));
        }
        config
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(5))
            .keepalives_interval(std::time::Duration::from_secs(1))
            .keepalives_retries(5);
        // The URL may name the connections (`?application_name=`), to tell servers apart in
        // pg_stat_activity.
        if config.get_application_name().is_none() {
            config.application_name("lqsm");
        }
        Ok(Resolved { config, ssl_mode })
    }
}

/// How long PostgreSQL lets a session of this store sit idle inside a transaction before
/// ending it (and releasing its locks), in milliseconds: under the shortest sensible lease.
const IDLE_IN_TRANSACTION_MS: u64 = 2_000;

/// A configuration ready to connect with.
#[derive(Clone)]
pub(crate) struct Resolved {
    pub(crate) config: postgres::Config,
    pub(crate) ssl_mode: SslMode,
}

/// Whether the connection string sets `sslmode` itself (the driver cannot tell a default
/// from an explicit `prefer`).
fn mentions_ssl_mode(url: &str) -> bool {
    url.contains("sslmode=")
}

fn check_schema_name(schema: &str) -> Result<(), PostgresError> {
    let fine = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if fine {
        return Ok(());
    }
    Err(PostgresError::Config(format!(
        "schema `{schema}` is not a plain name; use 1 to 63 lower-case letters, digits and `_`, \
         not starting with a digit (e.g. `{DEFAULT_SCHEMA}`)"
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn password_and_ssl_mode_come_from_the_environment_when_the_url_has_none() {
        let options = PostgresOptions::new("postgresql://lqsm@db1:5433/jobs");
        let resolved = options
            .resolve(&env(&[("PGPASSWORD", "s3cret"), ("PGSSLMODE", "require")]))
            .unwrap();
        assert_eq!(resolved.config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(resolved.ssl_mode, SslMode::Require);
    }

    #[test]
    fn the_url_wins_over_options_and_environment() {
        let mut options =
            PostgresOptions::new("postgresql://lqsm:fromurl@db1/jobs?sslmode=disable");
        options.ssl_mode = Some(SslMode::Require);
        let resolved = options
            .resolve(&env(&[("PGPASSWORD", "fromenv"), ("PGSSLMODE", "require")]))
            .unwrap();
        assert_eq!(resolved.config.get_password(), Some(&b"fromurl"[..]));
        assert_eq!(resolved.ssl_mode, SslMode::Disable);
    }

    #[test]
    fn password_file_is_read_without_its_newline_and_wins_over_the_environment() {
        let dir = std::env::temp_dir().join(format!("lqsm-pg-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "from file\n").unwrap();
        let mut options = PostgresOptions::new("host=db1 user=lqsm dbname=jobs");
        options.password_file = Some(file);
        options.ssl_mode = Some(SslMode::Disable);
        let resolved = options
            .resolve(&env(&[("PGPASSWORD", "fromenv"), ("PGSSLMODE", "require")]))
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(resolved.config.get_password(), Some(&b"from file"[..]));
        assert_eq!(
            resolved.ssl_mode,
            SslMode::Disable,
            "the option wins over PGSSLMODE"
        );
    }

    #[test]
    fn a_missing_password_file_is_named_in_the_error() {
        let mut options = PostgresOptions::new("postgresql://lqsm@db1/jobs");
        options.password_file = Some(PathBuf::from("/nonexistent/lqsm-password"));
        let err = options.resolve(&env(&[])).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/lqsm-password"), "{err}");
    }

    #[test]
    fn an_unknown_ssl_mode_and_an_odd_schema_are_refused_with_the_fix() {
        let err = PostgresOptions::new("postgresql://lqsm@db1/jobs")
            .resolve(&env(&[("PGSSLMODE", "verify-full")]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("use disable, prefer or require"), "{err}");
        let err = PostgresOptions::new("postgresql://lqsm@db1/jobs")
            .with_schema("Robert'); DROP")
            .resolve(&env(&[]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("lower-case letters"), "{err}");
    }

    #[test]
    fn a_url_without_user_takes_pguser() {
        let resolved = PostgresOptions::new("postgresql://db1/jobs")
            .resolve(&env(&[("PGUSER", "ops")]))
            .unwrap();
        assert_eq!(resolved.config.get_user(), Some("ops"));
    }
}
