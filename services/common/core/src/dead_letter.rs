//! Why a task was dead-lettered: the [`ErrorClass`] the processor writes into a dead letter's
//! header and index row, which operators filter by (AdminService, `dispatchctl dlq --error-class`)
//! and which labels `dispatch_dlq_records_total`.

/// Why a record went to the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The handler failed permanently.
    Permanent,
    /// No attempt left.
    Exhausted,
    /// The deadline passed (before the attempt, or before the next one would start).
    Deadline,
    /// No handler is registered for the task type.
    UnknownType,
    /// Not a valid envelope.
    Poison,
}

impl ErrorClass {
    /// Every class, in label order (the discriminants index it).
    pub const ALL: [Self; 5] = [
        Self::Permanent,
        Self::Exhausted,
        Self::Deadline,
        Self::UnknownType,
        Self::Poison,
    ];

    /// Every class's name, in the order of [`ErrorClass::ALL`].
    pub const NAMES: [&'static str; 5] = [
        Self::Permanent.as_str(),
        Self::Exhausted.as_str(),
        Self::Deadline.as_str(),
        Self::UnknownType.as_str(),
        Self::Poison.as_str(),
    ];

    /// The name: header, column and label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Exhausted => "exhausted",
            Self::Deadline => "deadline",
            Self::UnknownType => "unknown_type",
            Self::Poison => "poison",
        }
    }

    /// The class named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorClass;

    #[test]
    fn names_are_the_stored_ones_and_parse_back() {
        // Stored in dead_letters.error_class and DLQ headers: renaming one orphans stored rows.
        assert_eq!(
            ErrorClass::NAMES,
            [
                "permanent",
                "exhausted",
                "deadline",
                "unknown_type",
                "poison"
            ]
        );
        for (i, c) in ErrorClass::ALL.into_iter().enumerate() {
            assert_eq!(c as usize, i);
            assert_eq!(ErrorClass::parse(c.as_str()), Some(c));
        }
        assert_eq!(ErrorClass::parse("Permanent"), None);
        assert_eq!(ErrorClass::parse(""), None);
    }
}
