//! Which gateway the CLI talks to, with which token, trusting which CA.
//!
//! Each value is taken from the first place that has it:
//!
//! ```text
//!  server:  --server URL      ▶ $CAUSEWAY_SERVER ▶ config.toml `server`            ▶ https://127.0.0.1:15000
//!  token:   --token/--token-file ▶ $CAUSEWAY_TOKEN ▶ config.toml `token`/`token_file` ▶ none
//!  CA:      --ca-file FILE    ▶ $CAUSEWAY_CA_FILE ▶ config.toml `ca_file`           ▶ none
//!  namespace (apply):  -n NS  ▶ config.toml `namespace`                         ▶ the server's `default`
//! ```
//!
//! The namespace is where `apply` puts documents that name none, as a kubectl context's is:
//! `-n` also refuses documents naming another, the config file's only fills in.
//!
//! The config file is `$XDG_CONFIG_HOME/causeway/config.toml`, else `~/.config/causeway/config.toml`
//! (`causeway demo` writes one). The values resolve independently: tokens are mesh-wide, so
//! `--server` pointing at another gateway of the same mesh keeps using the configured token.
//! The CA (PEM) is the one of the server's cluster, which signs its admin certificate; an
//! `https://` server needs one. Relative `token_file` and `ca_file` in the config file are
//! relative to the file. Every error names where the bad value came from.
//!
//! The resolver takes the environment as a lookup function, so tests need not touch the
//! process's environment.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use api::client::Client;

pub const DEFAULT_SERVER: &str = "https://127.0.0.1:15000";
pub const SERVER_ENV: &str = "CAUSEWAY_SERVER";
pub const TOKEN_ENV: &str = "CAUSEWAY_TOKEN";
pub const CA_FILE_ENV: &str = "CAUSEWAY_CA_FILE";

/// The connection flags every admin command takes.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// Admin API of a gateway, e.g. https://127.0.0.1:15000 [default: $CAUSEWAY_SERVER, then the
    /// config file, then https://127.0.0.1:15000].
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token [default: $CAUSEWAY_TOKEN, then the config file].
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// Read the bearer token from this file.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) of the server's cluster, to verify its HTTPS certificate by
    /// (`causeway bundle` on the gateway prints it) [default: $CAUSEWAY_CA_FILE, then the
    /// config file].
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
    /// The config file (and the key in it).
    File(PathBuf, &'static str),
    /// A file a token was read from, and what named it.
    TokenFile(PathBuf, Box<Source>),
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "from {flag}"),
            Source::Env(var) => write!(f, "from ${var}"),
            Source::File(path, key) => write!(f, "from `{key}` in {}", path.display()),
            Source::TokenFile(path, named_by) => {
                write!(f, "read from {} (named {named_by})", path.display())
            }
            Source::Default => f.write_str("the default"),
        }
    }
}

/// The resolved server, token and CA, ready to build a [`Client`].
#[derive(Debug, Clone)]
pub struct Context {
    pub server: String,
    pub server_source: Source,
    pub token: Option<String>,
    pub token_source: Option<Source>,
    /// The CA file's path and where it was named.
    pub ca_file: Option<(PathBuf, Source)>,
    /// The CA file's contents (PEM).
    pub ca_pem: Option<Vec<u8>>,
    /// The config file's `namespace`, for documents that name none.
    pub namespace: Option<(String, Source)>,
}

impl Context {
    pub fn client(&self) -> Result<Client, ContextError> {
        self.build().map_err(|e| ContextError {
            message: self.explain(&e),
        })
    }

    fn build(&self) -> Result<Client, api::client::ClientError> {
        Client::with_ca(&self.server, self.token.clone(), self.ca_pem.as_deref())
    }

    /// The error with where the value at fault came from.
    fn explain(&self, e: &api::client::ClientError) -> String {
        use api::client::ClientError;
        match (e, &self.token_source, &self.ca_file) {
            (ClientError::InvalidToken { .. }, Some(source), _) => {
                format!("{e} (the token came {source})")
            }
            (ClientError::InvalidCa { .. }, _, Some((path, source))) => {
                format!("{}: {e} (named {source})", path.display())
            }
            (ClientError::MissingCa { .. }, _, _) => format!(
                "{e}; give it with --ca-file, ${CA_FILE_ENV} or `ca_file` in the config file \
                 (the server came {})",
                self.server_source
            ),
            _ => format!("{e} (the server came {})", self.server_source),
        }
    }
}

/// A value that cannot be used, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ContextError {
    pub message: String,
}

impl ContextError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// What the config file may say. Unknown keys are refused so a typo does not silently fall back
/// to the default server.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
    /// Where `apply` puts documents without `metadata.namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
}

/// The config file's path under the given environment, if a home can be found.
pub fn config_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let non_empty = |name: &str| env(name).filter(|v| !v.is_empty());
    // The XDG spec says to ignore relative values.
    if let Some(xdg) = non_empty("XDG_CONFIG_HOME").map(PathBuf::from)
        && xdg.is_absolute()
    {
        return Some(xdg.join("causeway").join("config.toml"));
    }
    non_empty("HOME").map(|home| {
        PathBuf::from(home)
            .join(".config")
            .join("causeway")
            .join("config.toml")
    })
}

/// Resolves the server, token and CA: flags, then the environment, then the config file, then
/// the defaults.
pub fn resolve(
    flags: &ConnectionArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Context, ContextError> {
    let env_value = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let path = config_path(env);
    let file = match &path {
        Some(path) => read_config(path)?,
        None => None,
    };

    let (server, server_source) = if let Some(server) = &flags.server {
        (server.clone(), Source::Flag("--server"))
    } else if let Some(server) = env_value(SERVER_ENV) {
        (server, Source::Env(SERVER_ENV))
    } else if let (Some(path), Some(server)) = (&path, file.as_ref().and_then(|f| f.server.clone()))
    {
        (server, Source::File(path.clone(), "server"))
    } else {
        (DEFAULT_SERVER.to_string(), Source::Default)
    };
    let ca_file = if let Some(file) = &flags.ca_file {
        Some((file.clone(), Source::Flag("--ca-file")))
    } else if let Some(file) = env_value(CA_FILE_ENV) {
        Some((PathBuf::from(file), Source::Env(CA_FILE_ENV)))
    } else if let (Some(path), Some(file)) = (&path, file.as_ref().and_then(|f| f.ca_file.clone()))
    {
        // Like token_file: relative to the config file.
        let base = path.parent().unwrap_or(Path::new("."));
        Some((base.join(file), Source::File(path.clone(), "ca_file")))
    } else {
        None
    };
    let ca_pem = match &ca_file {
        Some((file, source)) => Some(fs::read(file).map_err(|e| {
            ContextError::new(format!(
                "cannot read the CA file {} (named {source}): {e}",
                file.display()
            ))
        })?),
        None => None,
    };

    let token = if let Some(token) = &flags.token {
        Some((token.clone(), Source::Flag("--token")))
    } else if let Some(file) = &flags.token_file {
        Some(read_token_file(file, Source::Flag("--token-file"))?)
    } else if let Some(token) = env_value(TOKEN_ENV) {
        Some((token, Source::Env(TOKEN_ENV)))
    } else if let (Some(path), Some(config)) = (&path, &file) {
        match (&config.token, &config.token_file) {
            (Some(token), None) => Some((token.clone(), Source::File(path.clone(), "token"))),
            (None, Some(token_file)) => {
                // A relative token_file is relative to the config file, not to wherever the
                // command happens to run.
                let base = path.parent().unwrap_or(Path::new("."));
                Some(read_token_file(
                    &base.join(token_file),
                    Source::File(path.clone(), "token_file"),
                )?)
            }
            (Some(_), Some(_)) => {
                return Err(ContextError::new(format!(
                    "{}: give either `token` or `token_file`, not both",
                    path.display()
                )));
            }
            (None, None) => None,
        }
    } else {
        None
    };
    let (token, token_source) = match token {
        Some((token, source)) => {
            let token = token.trim().to_string();
            if let Some(problem) = token_problem(&token) {
                return Err(ContextError::new(format!("the token {source} {problem}")));
            }
            (Some(token), Some(source))
        }
        None => (None, None),
    };
    let namespace = match (&path, file.as_ref().and_then(|f| f.namespace.clone())) {
        (Some(path), Some(namespace)) => {
            let source = Source::File(path.clone(), "namespace");
            if federation::model::check_dns_label("namespace", &namespace).is_err() {
                return Err(ContextError::new(format!(
                    "the namespace {namespace:?} {source} is not a DNS label (lowercase letters, \
                     digits and '-')"
                )));
            }
            Some((namespace, source))
        }
        _ => None,
    };
    let context = Context {
        server,
        server_source,
        token,
        token_source,
        ca_file,
        ca_pem,
        namespace,
    };
    // Checked here so the message can say where the value at fault came from. A missing CA is
    // not a bad value: building the client says what to give.
    match context.build() {
        Ok(_) | Err(api::client::ClientError::MissingCa { .. }) => Ok(context),
        Err(e) => Err(ContextError::new(context.explain(&e))),
    }
}

/// The config file's contents, or `None` when there is none.
fn read_config(path: &Path) -> Result<Option<FileConfig>, ContextError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ContextError::new(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| ContextError::new(format!("{}: {}", path.display(), e.message())))
}

fn read_token_file(path: &Path, named_by: Source) -> Result<(String, Source), ContextError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok((
            text.trim().to_string(),
            Source::TokenFile(path.to_path_buf(), Box::new(named_by)),
        )),
        Err(e) => Err(ContextError::new(format!(
            "cannot read the token file {} (named {named_by}): {e}",
            path.display()
        ))),
    }
}

fn token_problem(token: &str) -> Option<&'static str> {
    if token.is_empty() {
        Some("is empty")
    } else if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains whitespace or control characters")
    } else {
        None
    }
}

/// Writes the config file for this user (`causeway demo` calls it) so that later commands
/// reach `server` with `token`, trusting the CA in `ca_file`, without flags. Mode 0600: it
/// holds a credential.
pub fn write_context(server: &str, token: &str, ca_file: Option<&Path>) -> io::Result<PathBuf> {
    let env = |name: &str| std::env::var(name).ok();
    let path = config_path(&env).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "neither $XDG_CONFIG_HOME nor $HOME is set",
        )
    })?;
    write_context_to(&path, server, token, ca_file)?;
    Ok(path)
}

/// Writes `path` atomically (a temporary file renamed over it), creating its directories.
pub fn write_context_to(
    path: &Path,
    server: &str,
    token: &str,
    ca_file: Option<&Path>,
) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let config = FileConfig {
        server: Some(server.to_string()),
        token: Some(token.to_string()),
        token_file: None,
        // Absolute, so the file means the same wherever it is read from.
        ca_file: ca_file.map(std::path::absolute).transpose()?,
        namespace: None,
    };
    let text = toml::to_string(&config).map_err(io::Error::other)?;
    let tmp = path.with_extension("toml.tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(b"# Written by causeway; read by the causeway CLI.\n")?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn flags(server: Option<&str>, token: Option<&str>) -> ConnectionArgs {
        ConnectionArgs {
            server: server.map(str::to_string),
            token: token.map(str::to_string),
            token_file: None,
            ca_file: None,
        }
    }

    /// A cluster CA's certificate (PEM) in `dir`.
    fn ca_pem(dir: &Path) -> PathBuf {
        let td = federation::identity::TrustDomain::parse("east.mesh").unwrap();
        federation::identity::CertificateAuthority::load_or_create(&dir.join("ca"), &td).unwrap();
        dir.join("ca/ca.pem")
    }

    fn config_home(contents: &str) -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("causeway");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("config.toml"), contents).unwrap();
        home
    }

    #[test]
    fn cli_context_flags_beat_env_beat_file_beat_defaults() {
        let xdg = config_home("server = \"http://10.0.0.1:15000\"\ntoken = \"file-token\"\n");
        let xdg_path = xdg.path().to_str().unwrap();
        let everything = env_of(&[
            ("XDG_CONFIG_HOME", xdg_path),
            (SERVER_ENV, "http://10.0.0.2:15000"),
            (TOKEN_ENV, "env-token"),
        ]);

        let ctx = resolve(
            &flags(Some("http://10.0.0.3:1"), Some("flag-token")),
            &everything,
        )
        .unwrap();
        assert_eq!(ctx.server, "http://10.0.0.3:1");
        assert_eq!(ctx.server_source, Source::Flag("--server"));
        assert_eq!(ctx.token.as_deref(), Some("flag-token"));

        let ctx = resolve(&flags(None, None), &everything).unwrap();
        assert_eq!(ctx.server, "http://10.0.0.2:15000");
        assert_eq!(ctx.token.as_deref(), Some("env-token"));
        assert_eq!(ctx.token_source, Some(Source::Env(TOKEN_ENV)));

        let file_only = env_of(&[("XDG_CONFIG_HOME", xdg_path), (SERVER_ENV, "")]);
        let ctx = resolve(&flags(None, None), &file_only).unwrap();
        assert_eq!(ctx.server, "http://10.0.0.1:15000");
        assert_eq!(ctx.token.as_deref(), Some("file-token"));
        assert!(matches!(ctx.server_source, Source::File(_, "server")));

        // Each value on its own: a flag for the server keeps the file's token.
        let ctx = resolve(&flags(Some("http://10.0.0.9:1"), None), &file_only).unwrap();
        assert_eq!(ctx.token.as_deref(), Some("file-token"));

        let empty = tempfile::tempdir().unwrap();
        let nothing = env_of(&[("HOME", empty.path().to_str().unwrap())]);
        let ctx = resolve(&flags(None, None), &nothing).unwrap();
        assert_eq!((ctx.server.as_str(), ctx.token), (DEFAULT_SERVER, None));
        assert_eq!(ctx.server_source, Source::Default);
        // No home at all: still the defaults.
        assert!(resolve(&flags(None, None), &env_of(&[])).is_ok());
    }

    #[test]
    fn cli_context_finds_the_file_under_xdg_or_home() {
        let with = |pairs: &[(&str, &str)]| config_path(&env_of(pairs));
        assert_eq!(
            with(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")]),
            Some(PathBuf::from("/x/causeway/config.toml"))
        );
        // Relative or empty XDG values are ignored, as the spec says.
        for xdg in ["", "relative"] {
            assert_eq!(
                with(&[("XDG_CONFIG_HOME", xdg), ("HOME", "/h")]),
                Some(PathBuf::from("/h/.config/causeway/config.toml"))
            );
        }
        assert_eq!(with(&[]), None);
    }

    #[test]
    fn cli_context_namespace_comes_from_the_config_file() {
        let xdg = config_home("namespace = \"shop\"\n");
        let env = env_of(&[("XDG_CONFIG_HOME", xdg.path().to_str().unwrap())]);
        let ctx = resolve(&flags(None, None), &env).unwrap();
        let (namespace, source) = ctx.namespace.unwrap();
        assert_eq!(namespace, "shop");
        assert!(matches!(source, Source::File(_, "namespace")));
        assert!(
            resolve(&flags(None, None), &env_of(&[]))
                .unwrap()
                .namespace
                .is_none()
        );

        let bad = config_home("namespace = \"Shop_1\"\n");
        let env = env_of(&[("XDG_CONFIG_HOME", bad.path().to_str().unwrap())]);
        let err = resolve(&flags(None, None), &env).unwrap_err().message;
        assert!(
            err.starts_with("the namespace \"Shop_1\" from `namespace` in ")
                && err.contains("not a DNS label"),
            "{err}"
        );
    }

    #[test]
    fn cli_context_reads_token_files_relative_to_the_config() {
        let xdg = config_home("token_file = \"admin.token\"\n");
        fs::write(xdg.path().join("causeway/admin.token"), "cw_abc_def\n").unwrap();
        let env = env_of(&[("XDG_CONFIG_HOME", xdg.path().to_str().unwrap())]);
        let ctx = resolve(&flags(None, None), &env).unwrap();
        assert_eq!(ctx.token.as_deref(), Some("cw_abc_def"));

        let other = xdg.path().join("other.token");
        fs::write(&other, "  cw_flag_file  \n").unwrap();
        let from_flag = ConnectionArgs {
            token_file: Some(other),
            ..ConnectionArgs::default()
        };
        let ctx = resolve(&from_flag, &env).unwrap();
        assert_eq!(ctx.token.as_deref(), Some("cw_flag_file"));
    }

    #[test]
    fn cli_context_errors_name_where_the_bad_value_came_from() {
        let empty = env_of(&[]);
        let err = resolve(&flags(Some("gopher://gw:1"), None), &empty).unwrap_err();
        assert!(err.message.contains("--server"), "{err}");
        let err = resolve(&flags(Some("https://gw:1"), None), &empty)
            .unwrap()
            .client()
            .unwrap_err();
        assert!(err.message.contains("--server"), "{err}");

        let err = resolve(&flags(None, None), &env_of(&[(SERVER_ENV, "ftp://x")])).unwrap_err();
        assert!(err.message.contains("$CAUSEWAY_SERVER"), "{err}");

        let err = resolve(&flags(None, None), &env_of(&[(TOKEN_ENV, "a b")])).unwrap_err();
        assert!(err.message.contains("$CAUSEWAY_TOKEN"), "{err}");

        let xdg = config_home("server = \"http://gw:1\"\nsevrer = \"typo\"\n");
        let env = env_of(&[("XDG_CONFIG_HOME", xdg.path().to_str().unwrap())]);
        let err = resolve(&flags(None, None), &env).unwrap_err();
        assert!(
            err.message.contains("config.toml") && err.message.contains("sevrer"),
            "{err}"
        );

        let xdg = config_home("server = \"gopher://gw\"\n");
        let env = env_of(&[("XDG_CONFIG_HOME", xdg.path().to_str().unwrap())]);
        let err = resolve(&flags(None, None), &env).unwrap_err();
        assert!(
            err.message.contains("`server` in") && err.message.contains("config.toml"),
            "{err}"
        );

        let xdg = config_home("token_file = \"missing.token\"\n");
        let env = env_of(&[("XDG_CONFIG_HOME", xdg.path().to_str().unwrap())]);
        let err = resolve(&flags(None, None), &env).unwrap_err();
        assert!(
            err.message.contains("missing.token") && err.message.contains("token_file"),
            "{err}"
        );

        let xdg = config_home("token = \"a\"\ntoken_file = \"b\"\n");
        let env = env_of(&[("XDG_CONFIG_HOME", xdg.path().to_str().unwrap())]);
        assert!(
            resolve(&flags(None, None), &env)
                .unwrap_err()
                .message
                .contains("not both")
        );
    }

    #[test]
    fn cli_context_written_file_is_private_and_reads_back() {
        let xdg = tempfile::tempdir().unwrap();
        let path = xdg.path().join("causeway/config.toml");
        write_context_to(
            &path,
            "http://127.0.0.1:15000",
            "cw_0123456789ab_s\"q",
            None,
        )
        .unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Overwriting keeps it private.
        let ca = ca_pem(xdg.path());
        write_context_to(
            &path,
            "https://127.0.0.2:15000",
            "cw_0123456789ab_x",
            Some(&ca),
        )
        .unwrap();
        let env = env_of(&[("XDG_CONFIG_HOME", xdg.path().to_str().unwrap())]);
        let ctx = resolve(&flags(None, None), &env).unwrap();
        assert_eq!(ctx.server, "https://127.0.0.2:15000");
        assert_eq!(ctx.token.as_deref(), Some("cw_0123456789ab_x"));
        assert_eq!(ctx.ca_pem, Some(fs::read(&ca).unwrap()));
        assert!(matches!(&ctx.ca_file, Some((p, Source::File(_, "ca_file"))) if p == &ca));
        assert!(ctx.client().unwrap().is_https());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn cli_context_finds_the_ca_and_says_how_to_give_one() {
        let xdg = config_home("ca_file = \"ca/ca.pem\"\n");
        let in_config = ca_pem(&xdg.path().join("causeway"));
        let other = tempfile::tempdir().unwrap();
        let elsewhere = ca_pem(other.path());
        let xdg_path = xdg.path().to_str().unwrap();

        // Relative to the config file, not to where the command runs.
        let ctx = resolve(
            &flags(None, None),
            &env_of(&[("XDG_CONFIG_HOME", xdg_path)]),
        )
        .unwrap();
        assert_eq!(ctx.ca_file.as_ref().unwrap().0, in_config);
        assert_eq!(ctx.server, DEFAULT_SERVER);
        assert!(ctx.client().is_ok());

        let env = env_of(&[
            ("XDG_CONFIG_HOME", xdg_path),
            (CA_FILE_ENV, elsewhere.to_str().unwrap()),
        ]);
        let ctx = resolve(&flags(None, None), &env).unwrap();
        assert_eq!(
            ctx.ca_file,
            Some((elsewhere.clone(), Source::Env(CA_FILE_ENV)))
        );
        let flagged = ConnectionArgs {
            ca_file: Some(in_config.clone()),
            ..ConnectionArgs::default()
        };
        let ctx = resolve(&flagged, &env).unwrap();
        assert_eq!(ctx.ca_file, Some((in_config, Source::Flag("--ca-file"))));

        // https with no CA at all: the client says where to give one.
        let empty = tempfile::tempdir().unwrap();
        let nothing = env_of(&[("HOME", empty.path().to_str().unwrap())]);
        let err = resolve(&flags(None, None), &nothing)
            .unwrap()
            .client()
            .unwrap_err();
        assert!(
            err.message.contains("--ca-file") && err.message.contains(CA_FILE_ENV),
            "{err}"
        );
        // A CA for plain http is not needed, and harmless.
        let ctx = resolve(&flags(Some("http://gw:1"), None), &env).unwrap();
        assert!(!ctx.client().unwrap().is_https());

        let missing = ConnectionArgs {
            ca_file: Some(empty.path().join("nope.pem")),
            ..ConnectionArgs::default()
        };
        let err = resolve(&missing, &nothing).unwrap_err();
        assert!(
            err.message.contains("nope.pem") && err.message.contains("--ca-file"),
            "{err}"
        );
        let junk = empty.path().join("junk.pem");
        fs::write(&junk, "not a certificate").unwrap();
        let err = resolve(
            &flags(None, None),
            &env_of(&[(CA_FILE_ENV, junk.to_str().unwrap())]),
        )
        .unwrap_err();
        assert!(
            err.message.contains("junk.pem") && err.message.contains(CA_FILE_ENV),
            "{err}"
        );
    }
}
