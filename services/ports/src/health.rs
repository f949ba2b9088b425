//! What `/readyz` asks of a role's dependencies.

use crate::Cause;
use async_trait::async_trait;
use serde_json::Value;
use std::error::Error;

/// Something a role needs in order to serve: a dependency that must answer, or a condition
/// of the role's own work (the projector's progress).
#[async_trait]
pub trait Dependency: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Whether it answers; if not, why (a [`StoreError`](crate::StoreError) for the stores,
    /// an error of the role's own for its own work).
    async fn check(&self) -> Result<(), Cause>;

    /// What `/readyz` shows for a failed check: `"unavailable"` (the cause goes to the log,
    /// not to whoever asks), unless the check has something an operator should see there.
    fn failure(&self, _error: &(dyn Error + Send + Sync + 'static)) -> Value {
        Value::String("unavailable".to_owned())
    }
}
