//! Function handlers: the built-ins every worker serves and those a Rust program
//! registers by name (Celery's `@app.task`).

use serde_json::Value;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// What a handler's future yields: its result, or a message saying why it failed.
pub type HandlerResult = Result<Value, String>;

/// A running handler call.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

/// A registered handler: called with the job's arguments.
pub(crate) type CustomHandler = Arc<dyn Fn(Value) -> HandlerFuture + Send + Sync>;

/// Names of the built-in handlers.
pub const BUILTIN_HANDLERS: [&str; 4] = ["lqsm.noop", "lqsm.echo", "lqsm.sleep", "lqsm.fail"];

/// A handler the worker can call.
#[derive(Clone)]
pub(crate) enum Handler {
    /// Returns null.
    Noop,
    /// Returns its arguments.
    Echo,
    /// Sleeps for its arguments' seconds, then returns null.
    Sleep,
    /// Fails with its arguments as the message.
    Fail,
    /// Registered by the program.
    Custom(CustomHandler),
}

/// A handler's answer: at once for built-ins that need no waiting, else a future.
pub(crate) enum Call {
    Done(HandlerResult),
    Pending(HandlerFuture),
}

impl Handler {
    /// The built-in called `name`.
    pub(crate) fn builtin(name: &str) -> Option<Self> {
        Some(match name {
            "lqsm.noop" => Self::Noop,
            "lqsm.echo" => Self::Echo,
            "lqsm.sleep" => Self::Sleep,
            "lqsm.fail" => Self::Fail,
            _ => return None,
        })
    }

    /// Calls it with `args`.
    pub(crate) fn call(&self, args: Value) -> Call {
        match self {
            Self::Noop => Call::Done(Ok(Value::Null)),
            Self::Echo => Call::Done(Ok(args)),
            Self::Fail => Call::Done(Err(match args {
                Value::String(message) => message,
                Value::Null => "lqsm.fail was called (no message given)".to_owned(),
                other => other.to_string(),
            })),
            Self::Sleep => match sleep_duration(&args) {
                Ok(d) => Call::Pending(Box::pin(async move {
                    tokio::time::sleep(d).await;
                    Ok(Value::Null)
                })),
                Err(e) => Call::Done(Err(e)),
            },
            Self::Custom(f) => Call::Pending(f(args)),
        }
    }
}

/// `lqsm.sleep`'s duration: `n` or `{"seconds": n}`, n a non-negative number.
fn sleep_duration(args: &Value) -> Result<Duration, String> {
    let seconds = match args {
        Value::Number(n) => n.as_f64(),
        Value::Object(map) => map.get("seconds").and_then(Value::as_f64),
        _ => None,
    };
    let Some(seconds) = seconds else {
        return Err(format!(
            "lqsm.sleep takes a number of seconds or {{\"seconds\": n}}, got {args}"
        ));
    };
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("lqsm.sleep: {seconds} is not a non-negative number of seconds"))
}

/// Wraps a handler so a panic inside it becomes a failure of the attempt instead of
/// a lost task.
pub(crate) struct CatchPanic(pub(crate) HandlerFuture);

impl Future for CatchPanic {
    type Output = HandlerResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<HandlerResult> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => Poll::Ready(Err(panic_message(panic.as_ref()))),
        }
    }
}

/// The failure message of a handler that panicked with `payload`.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    format!("the handler panicked: {what}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    async fn call(name: &str, args: Value) -> HandlerResult {
        match Handler::builtin(name).unwrap().call(args) {
            Call::Done(r) => r,
            Call::Pending(f) => f.await,
        }
    }

    #[tokio::test]
    async fn noop_returns_null_and_echo_returns_its_arguments() {
        assert_eq!(call("lqsm.noop", json!({"x": 1})).await, Ok(Value::Null));
        assert_eq!(
            call("lqsm.echo", json!({"x": [1, 2]})).await,
            Ok(json!({"x": [1, 2]}))
        );
    }

    #[tokio::test]
    async fn fail_fails_with_its_arguments_as_the_message() {
        assert_eq!(
            call("lqsm.fail", json!("disk full")).await,
            Err("disk full".into())
        );
        assert_eq!(
            call("lqsm.fail", json!({"code": 7})).await,
            Err("{\"code\":7}".into())
        );
    }

    #[tokio::test]
    async fn sleep_takes_seconds_as_a_number_or_an_object() {
        let started = std::time::Instant::now();
        assert_eq!(call("lqsm.sleep", json!(0.05)).await, Ok(Value::Null));
        assert_eq!(
            call("lqsm.sleep", json!({"seconds": 0.05})).await,
            Ok(Value::Null)
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        let err = call("lqsm.sleep", json!("soon")).await.unwrap_err();
        assert!(err.contains("seconds"), "{err}");
        let err = call("lqsm.sleep", json!(-1)).await.unwrap_err();
        assert!(err.contains("-1"), "{err}");
    }

    #[tokio::test]
    async fn a_panicking_handler_fails_its_attempt_with_the_panic_message() {
        let fut: HandlerFuture = Box::pin(async { panic!("bad input") });
        let result = CatchPanic(fut).await;
        assert_eq!(result, Err("the handler panicked: bad input".into()));
    }
}
