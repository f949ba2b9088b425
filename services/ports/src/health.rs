//! What `/readyz` asks of a role's dependencies.

use crate::StoreError;
use async_trait::async_trait;
use serde_json::Value;

/// Something a role needs in order to serve: a dependency that must answer, or a condition
/// of the role's own work (the projector's progress).
#[async_trait]
pub trait Dependency: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    async fn check(&self) -> Result<(), StoreError>;

    /// What `/readyz` shows for a failed check: `"unavailable"` (the cause goes to the log,
    /// not to whoever asks), unless the check has something an operator should see there.
    fn failure(&self, _error: &StoreError) -> Value {
        Value::String("unavailable".to_owned())
    }
}
