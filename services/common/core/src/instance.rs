//! This process's name where other processes read it (partition lease owners, the execution
//! ledger, Kafka client ids): `<hostname>:<pid>`.

/// The host's name: `/proc/sys/kernel/hostname`, else `$HOSTNAME` (Kubernetes sets the pod
/// name), else `localhost`.
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `<hostname>:<pid>`: two processes never share it while both run, and a restarted process
/// gets a new one.
pub fn name() -> String {
    format!("{}:{}", host(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_host_colon_pid() {
        assert_eq!(name(), format!("{}:{}", host(), std::process::id()));
        assert!(!host().is_empty());
    }
}
