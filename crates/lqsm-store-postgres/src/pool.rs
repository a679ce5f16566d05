//! A few connections shared by the threads that call the store.
//!
//! The store is called from blocking threads (the server's committer, restores, reads), a
//! handful at a time, so a small pool of synchronous clients is all it needs: a caller takes
//! a connection, uses it and gives it back; when all `max` are out, it waits. Each
//! connection keeps the statements it prepared, so a commit parses nothing.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};

use postgres::{Client, Statement};

use crate::PostgresError;
use crate::config::{Resolved, SslMode};

/// One connection with its prepared statements.
pub(crate) struct Connection {
    pub(crate) client: Client,
    prepared: HashMap<String, Statement>,
}

impl Connection {
    /// The prepared statement for `sql`, prepared on first use.
    pub(crate) fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.prepared.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

/// Opens connections to one database and lends them out.
pub(crate) struct Pool {
    config: postgres::Config,
    tls: Tls,
    max: usize,
    /// The idle connections and how many exist in all.
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Connection>,
    open: usize,
}

enum Tls {
    None,
    OpenSsl(postgres_openssl::MakeTlsConnector),
}

impl Pool {
    pub(crate) fn new(
        resolved: Resolved,
        ssl_root_cert: Option<&std::path::Path>,
        max: usize,
    ) -> Result<Self, PostgresError> {
        let tls = match resolved.ssl_mode {
            SslMode::Disable => Tls::None,
            SslMode::Prefer | SslMode::Require => Tls::OpenSsl(tls_connector(ssl_root_cert)?),
        };
        Ok(Self {
            config: resolved.config,
            tls,
            max,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        // The state is two plain values updated in single steps, so a panic elsewhere while
        // holding the lock cannot leave it half-changed.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection for the caller alone, opened if none is idle and fewer than `max` exist;
    /// otherwise waits for one to be given back.
    pub(crate) fn get(&self) -> Result<Lent<'_>, PostgresError> {
        let mut state = self.state();
        loop {
            if let Some(connection) = state.idle.pop() {
                return Ok(Lent {
                    pool: self,
                    connection: Some(connection),
                });
            }
            if state.open < self.max {
                state.open += 1;
                break;
            }
            state = self
                .returned
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        drop(state);
        match self.connect() {
            Ok(connection) => Ok(Lent {
                pool: self,
                connection: Some(connection),
            }),
            Err(e) => {
                self.state().open -= 1;
                self.returned.notify_one();
                Err(e)
            }
        }
    }

    fn connect(&self) -> Result<Connection, PostgresError> {
        let client = match &self.tls {
            Tls::None => self.config.connect(postgres::NoTls),
            Tls::OpenSsl(connector) => self.config.connect(connector.clone()),
        }
        .map_err(|source| PostgresError::Connect {
            target: describe_target(&self.config),
            detail: crate::with_causes(&source),
            source,
        })?;
        Ok(Connection {
            client,
            prepared: HashMap::new(),
        })
    }

    fn give_back(&self, connection: Connection) {
        let mut state = self.state();
        if connection.client.is_closed() {
            state.open -= 1;
        } else {
            state.idle.push(connection);
        }
        drop(state);
        self.returned.notify_one();
    }
}

/// A connection lent by the pool, given back when dropped.
pub(crate) struct Lent<'a> {
    pool: &'a Pool,
    connection: Option<Connection>,
}

impl std::ops::Deref for Lent<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.connection
            .as_ref()
            .expect("a lent connection is only taken when it is dropped")
    }
}

impl std::ops::DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.connection
            .as_mut()
            .expect("a lent connection is only taken when it is dropped")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.pool.give_back(connection);
        }
    }
}

fn tls_connector(
    root_cert: Option<&std::path::Path>,
) -> Result<postgres_openssl::MakeTlsConnector, PostgresError> {
    let tls_error = |e: openssl::error::ErrorStack| {
        PostgresError::Config(format!("setting up TLS failed: {e}"))
    };
    let mut builder =
        openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).map_err(tls_error)?;
    match root_cert {
        Some(file) => builder.set_ca_file(file).map_err(|e| {
            PostgresError::Config(format!(
                "the root certificate file `{}` cannot be used ({e}); give a PEM file of the \
                 certificate authorities that signed the server's certificate",
                file.display()
            ))
        })?,
        // Without a root certificate, as libpq's `require`: encrypted, not authenticated.
        None => builder.set_verify(openssl::ssl::SslVerifyMode::NONE),
    }
    let mut connector = postgres_openssl::MakeTlsConnector::new(builder.build());
    if root_cert.is_none() {
        connector.set_callback(|config, _| {
            config.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}

/// "host:port/database as user", for error messages (never the password).
fn describe_target(config: &postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".to_string());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{} as `{}`",
        config.get_dbname().unwrap_or("(default database)"),
        config.get_user().unwrap_or("(no user)")
    )
}
