//! The command line every service binary shares: `--config PATH` (or `--config=PATH`, or
//! `DISPATCH_CONFIG`), `--print-config[=toml|json]`, `--help` and `--version`. A binary with flags
//! of its own flattens [`ServiceArgs`] into its flags struct and parses that with [`parse`].
//!
//! Parsed with clap so a service binary behaves like any other CLI: a misspelt or unknown flag
//! stops start-up with a message instead of being ignored while the service starts on its
//! defaults.

use std::path::PathBuf;

use clap::{Args, FromArgMatches};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::settings::redact::render_redacted_json;
use crate::settings::{SettingsError, load, render_redacted};

/// The flags of a service binary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct ServiceArgs {
    /// TOML settings file; `DISPATCH_<SECTION>__<KEY>` environment variables override it.
    #[arg(long, value_name = "PATH", env = "DISPATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective settings (secrets redacted) and exit: TOML, or JSON (which also lists
    /// the optional keys left unset, as null) for tools.
    #[arg(long, value_name = "FORMAT", value_enum, num_args = 0..=1, require_equals = true,
          default_missing_value = "toml")]
    pub print_config: Option<ConfigFormat>,
}

/// The format of `--print-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigFormat {
    /// As a settings file is written.
    Toml,
    /// For tools: every key, unset optional ones as null.
    Json,
}

/// The clap command of binary `name` with flags `A`: [`ServiceArgs`], or a binary's own flags
/// struct that flattens it (`#[command(flatten)]`) and adds flags of that binary only.
pub fn command<A: Args>(
    name: &'static str,
    version: &'static str,
    about: &'static str,
) -> clap::Command {
    // After `augment_args`, which would otherwise make the struct's doc comment the about.
    A::augment_args(clap::Command::new(name))
        .version(version)
        .about(about)
        .after_help(
            "Settings: defaults < the --config file < DISPATCH_<SECTION>__<KEY> environment \
             variables (for example DISPATCH_KAFKA__BROKERS). Unknown keys stop start-up.",
        )
}

/// Parses the process arguments into flags `A` (as [`command`]); prints help, the version or a
/// usage error and exits the process as clap does (status 0 for help and version, 2 for a usage
/// error).
pub fn parse<A: Args + FromArgMatches>(
    name: &'static str,
    version: &'static str,
    about: &'static str,
) -> A {
    try_parse_from(name, version, about, std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// Parses `args` (the first is the binary's name) into flags `A` (as [`command`]).
///
/// # Errors
/// A usage error, or the help or version text (clap reports both as errors to print).
pub fn try_parse_from<A, I, T>(
    name: &'static str,
    version: &'static str,
    about: &'static str,
    args: I,
) -> Result<A, clap::Error>
where
    A: Args + FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command::<A>(name, version, about).try_get_matches_from(args)?;
    A::from_arg_matches(&matches)
}

/// Parses a service binary's flags ([`parse`]) under the binary's name, version and
/// description from its Cargo manifest: `let args: ServiceArgs = dispatch_runtime::service_flags!();`
/// (or a flags struct of the binary's own that flattens [`ServiceArgs`]).
#[macro_export]
macro_rules! service_flags {
    () => {
        $crate::cli::parse(
            env!("CARGO_BIN_NAME"),
            env!("CARGO_PKG_VERSION"),
            env!("CARGO_PKG_DESCRIPTION"),
        )
    };
}

impl ServiceArgs {
    /// Loads the settings from defaults, the `--config` file and the environment.
    ///
    /// # Errors
    /// As [`load`].
    pub fn load<T>(&self) -> Result<T, SettingsError>
    where
        T: DeserializeOwned + Serialize + Default,
    {
        load(self.config.as_deref())
    }

    /// The settings to start with ([`ServiceArgs::load`]), or `None` once `--print-config` has
    /// printed them (the binary then exits).
    ///
    /// # Errors
    /// As [`ServiceArgs::load`] and [`ServiceArgs::print_config`].
    pub fn settings<T>(&self) -> Result<Option<T>, SettingsError>
    where
        T: DeserializeOwned + Serialize + Default,
    {
        let settings = self.load()?;
        Ok((!self.print_config(&settings)?).then_some(settings))
    }

    /// With `--print-config`, prints `settings` (redacted) and returns true: the binary then exits.
    ///
    /// # Errors
    /// The settings do not serialize.
    pub fn print_config<T: Serialize>(&self, settings: &T) -> Result<bool, SettingsError> {
        match self.print_config {
            None => return Ok(false),
            Some(ConfigFormat::Toml) => println!("{}", render_redacted(settings)?),
            Some(ConfigFormat::Json) => println!("{}", render_redacted_json(settings)?),
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<ServiceArgs, clap::Error> {
        try_parse_from::<ServiceArgs, _, _>(
            "dispatch-test",
            "1.2.3",
            "a test service",
            std::iter::once("dispatch-test").chain(args.iter().copied()),
        )
    }

    #[test]
    fn config_takes_both_spellings() {
        for args in [&["--config", "a.toml"][..], &["--config=a.toml"][..]] {
            let a = parse(args).expect("parses");
            assert_eq!(a.config.as_deref(), Some(std::path::Path::new("a.toml")));
            assert_eq!(a.print_config, None);
        }
        let a = parse(&["--print-config", "--config=b.toml"]).expect("parses");
        assert_eq!(a.print_config, Some(ConfigFormat::Toml));
        assert_eq!(a.config.as_deref(), Some(std::path::Path::new("b.toml")));
        // `--print-config json` would be a stray argument: the format takes `=`.
        let a = parse(&["--print-config=json"]).expect("parses");
        assert_eq!(a.print_config, Some(ConfigFormat::Json));
        assert!(parse(&["--print-config=yaml"]).is_err());
    }

    /// A binary's own flags next to the shared ones.
    #[derive(Debug, Args)]
    struct WithOwn {
        #[command(flatten)]
        service: ServiceArgs,
        /// A flag of that binary only.
        #[arg(long)]
        own: bool,
    }

    #[test]
    fn a_binary_adds_its_own_flags_to_the_shared_ones() {
        let parse_own = |args: &[&str]| {
            try_parse_from::<WithOwn, _, _>(
                "dispatch-test",
                "1.2.3",
                "a test service",
                std::iter::once("dispatch-test").chain(args.iter().copied()),
            )
        };
        let a = parse_own(&["--own", "--config=a.toml"]).expect("parses");
        assert!(a.own);
        assert_eq!(
            a.service.config.as_deref(),
            Some(std::path::Path::new("a.toml"))
        );
        assert!(!parse_own(&[]).expect("parses").own);
        let help = parse_own(&["--help"]).expect_err("help").to_string();
        for word in [
            "--own",
            "--config <PATH>",
            "--print-config",
            "DISPATCH_KAFKA__BROKERS",
        ] {
            assert!(help.contains(word), "help lacks {word}: {help}");
        }
    }

    #[test]
    fn unknown_flags_and_stray_arguments_are_usage_errors() {
        for args in [
            &["--confg", "a.toml"][..],
            &["a.toml"][..],
            &["--config"][..],
        ] {
            let e = parse(args).expect_err("usage error");
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
        }
        let e = parse(&["--confg=a.toml"]).expect_err("unknown");
        assert!(e.to_string().contains("--confg"), "{e}");
    }

    #[test]
    fn help_and_version_name_the_binary() {
        let help = parse(&["--help"]).expect_err("help");
        assert_eq!(help.kind(), ErrorKind::DisplayHelp);
        let text = help.to_string();
        for word in [
            "dispatch-test",
            "a test service",
            "--config <PATH>",
            "--print-config",
        ] {
            assert!(text.contains(word), "help lacks {word}: {text}");
        }
        let version = parse(&["--version"]).expect_err("version");
        assert_eq!(version.kind(), ErrorKind::DisplayVersion);
        assert_eq!(version.to_string().trim(), "dispatch-test 1.2.3");
    }
}
