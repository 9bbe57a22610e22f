//! Topic names. A prefix (empty in production) lets tests share one broker without colliding.

use crate::task::Priority;

/// Number of delayed retry levels (dispatch.retry.1 ..= dispatch.retry.N).
pub const RETRY_LEVELS: u32 = 3;

/// The names of every dispatch topic under one prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics named `{prefix}dispatch.*`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// First-attempt topic of a priority.
    pub fn tasks(&self, p: Priority) -> String {
        format!("{}dispatch.tasks.{}", self.prefix, p.as_str())
    }

    /// Retry level `level` (1-based, clamped to the last level).
    pub fn retry(&self, level: u32) -> String {
        format!(
            "{}dispatch.retry.{}",
            self.prefix,
            level.clamp(1, RETRY_LEVELS)
        )
    }

    /// Dead letters.
    pub fn dlq(&self) -> String {
        format!("{}dispatch.dlq", self.prefix)
    }

    /// State-change events.
    pub fn events(&self) -> String {
        format!("{}dispatch.task-events", self.prefix)
    }

    /// Every task topic (first attempts and retries), for the processor's subscription.
    pub fn all_task_topics(&self) -> Vec<String> {
        let mut v: Vec<String> = Priority::ALL.iter().map(|p| self.tasks(*p)).collect();
        v.extend((1..=RETRY_LEVELS).map(|l| self.retry(l)));
        v
    }

    /// Every topic dispatch uses.
    pub fn all(&self) -> Vec<String> {
        let mut v = self.all_task_topics();
        v.push(self.dlq());
        v.push(self.events());
        v
    }

    /// The priority of a first-attempt topic name. Parses without allocating: the processor's
    /// poll loop asks this for every record.
    pub fn priority_of(&self, topic: &str) -> Option<Priority> {
        let name = self.unprefixed(topic)?.strip_prefix("dispatch.tasks.")?;
        Priority::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The retry level of a retry topic name.
    pub fn retry_level_of(&self, topic: &str) -> Option<u32> {
        let level = self.unprefixed(topic)?.strip_prefix("dispatch.retry.")?;
        // Only the canonical spelling: no sign, no leading zero.
        if level.starts_with(['+', '0']) {
            return None;
        }
        level
            .parse()
            .ok()
            .filter(|l| (1..=RETRY_LEVELS).contains(l))
    }

    fn unprefixed<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic.strip_prefix(self.prefix.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let t = Topics::new("t1.");
        assert_eq!(t.tasks(Priority::Low), "t1.dispatch.tasks.low");
        assert_eq!(t.retry(0), "t1.dispatch.retry.1");
        assert_eq!(t.retry(9), "t1.dispatch.retry.3");
        assert_eq!(t.all().len(), 8);
        assert_eq!(
            t.priority_of("t1.dispatch.tasks.critical"),
            Some(Priority::Critical)
        );
        assert_eq!(t.retry_level_of("t1.dispatch.retry.2"), Some(2));
        assert_eq!(t.retry_level_of("dispatch.retry.2"), None);
        for bad in [
            "t1.dispatch.retry.0",
            "t1.dispatch.retry.4",
            "t1.dispatch.retry.02",
            "t1.dispatch.retry.+2",
            "t1.dispatch.retry.",
        ] {
            assert_eq!(t.retry_level_of(bad), None, "{bad}");
        }
        assert_eq!(t.priority_of("t1.dispatch.tasks.urgent"), None);
        assert_eq!(t.priority_of("dispatch.tasks.low"), None);
        for p in Priority::ALL {
            assert_eq!(t.priority_of(&t.tasks(p)), Some(p));
        }
        for l in 1..=RETRY_LEVELS {
            assert_eq!(t.retry_level_of(&t.retry(l)), Some(l));
        }
    }
}
