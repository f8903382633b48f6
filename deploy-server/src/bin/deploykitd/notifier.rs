//! The `log` receiver: alert and incident notifications as one line each on standard error.

use async_trait::async_trait;
use deploy_core::{BackendError, Delivery, Notification, NotificationAction, Notifier};

/// Writes each notification as a line on standard error (the daemon's log).
#[derive(Debug, Clone)]
pub(crate) struct LogNotifier {
    /// The receiver's name, shown on each line.
    pub(crate) name: String,
}

#[async_trait]
impl Notifier for LogNotifier {
    async fn notify(&self, notification: &Notification) -> Result<Delivery, BackendError> {
        let action = match notification.action {
            NotificationAction::Trigger => "trigger",
            NotificationAction::Acknowledge => "acknowledge",
            NotificationAction::Resolve => "resolve",
        };
        let labels: Vec<String> = notification
            .labels
            .iter()
            .map(|(name, value)| format!("{name}={value:?}"))
            .collect();
        eprintln!(
            "deploykitd: notify[{}] {action} {:?} {} ({}) {}",
            self.name,
            notification.severity,
            notification.summary,
            notification.key,
            labels.join(" "),
        );
        Ok(Delivery::Delivered)
    }
}
