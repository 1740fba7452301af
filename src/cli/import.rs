//! `mqgate device import | export`: bulk provisioning from CSV or JSON lines (format in
//! `admin::bulk`). The whole file is checked before anything is written; generated tokens go
//! once to `--tokens-out`, never to the terminal or the log.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

use super::output::Out;
use crate::admin::Admin;
use crate::admin::bulk::{self, Format};
use crate::admin::import::{self, TokenFile};

/// Existing devices named one by one in the human summary; the rest are counted.
const EXISTING_LISTED: usize = 20;

/// `device import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Tenant name.
    #[arg(long)]
    tenant: String,
    /// The device file (CSV with a header row, or JSON lines).
    file: PathBuf,
    /// File format (default: from the file's extension, .csv or .jsonl).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Where the tokens generated for devices without a password hash are written (created with
    /// mode 0600; an existing file is never overwritten). Required when a new device needs one.
    #[arg(long)]
    tokens_out: Option<PathBuf>,
}

/// `device export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Tenant name.
    #[arg(long)]
    tenant: String,
    /// File format (default: from the file's extension, else csv).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Output file, or `-` (the default) for stdout.
    file: Option<PathBuf>,
}

fn format_of(path: &Path, given: Option<Format>) -> Result<Format> {
    given.or_else(|| Format::of_path(path)).with_context(|| {
        format!(
            "cannot tell the format of {} from its extension: give --format csv|jsonl",
            path.display()
        )
    })
}

/// Reads and checks the whole file, creates the token file, imports, then writes the tokens.
pub async fn import(args: ImportArgs, admin: &Admin, out: &Out) -> Result<()> {
    let format = format_of(&args.file, args.format)?;
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let lines = import::check(bulk::read(file, format)?)?;
    let tokens_file = match &args.tokens_out {
        Some(path) => Some(create_token_file(path, format)?),
        None => None,
    };
    let progress = Progress::new(lines.len());
    let done = admin
        .import_devices(&args.tenant, lines, tokens_file.is_some(), &|n, of| {
            progress.show(n, of)
        })
        .await;
    progress.finish();
    let imported = match done {
        Ok(i) => i,
        Err(e) => {
            if let Some(f) = tokens_file {
                f.discard();
            }
            return Err(e.into());
        }
    };
    if let Some(f) = tokens_file {
        f.write(&imported.tokens).with_context(|| {
            format!(
                "{} devices were created, but their tokens could not be written: \
                 give them new ones with `mqgate cred rotate`",
                imported.tokens.len()
            )
        })?;
    }
    summary(&args, &imported, out)
}

fn create_token_file(path: &Path, format: Format) -> Result<TokenFile> {
    TokenFile::create(path, format).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists: tokens are never written over an existing file (nothing imported)",
                path.display()
            )
        } else {
            anyhow::anyhow!("creating {}: {e} (nothing imported)", path.display())
        }
    })
}

fn summary(args: &ImportArgs, i: &import::Imported, out: &Out) -> Result<()> {
    let mut human = format!(
        "{} devices created, {} existed already (left as they were)",
        i.created.len(),
        i.existing.len()
    );
    if let Some(p) = &args.tokens_out {
        human.push_str(&format!(
            "; {} tokens written to {}",
            i.tokens.len(),
            p.display()
        ));
    }
    for c in i.existing.iter().take(EXISTING_LISTED) {
        human.push_str(&format!("\nexists\t{c}"));
    }
    if i.existing.len() > EXISTING_LISTED {
        human.push_str(&format!(
            "\n… and {} more",
            i.existing.len() - EXISTING_LISTED
        ));
    }
    out.done(
        &human,
        json!({
            "created": i.created.len(),
            "existing": i.existing.len(),
            "existing_ids": i.existing,
            "tokens": i.tokens.len(),
            "tokens_out": args.tokens_out,
        }),
    )
}

/// `device export`: to a file, or stdout (then the data is all that goes there).
pub async fn export(args: ExportArgs, admin: &Admin, out: &Out) -> Result<()> {
    let devices = admin.export_devices(&args.tenant).await?;
    match args.file.as_deref().filter(|p| *p != Path::new("-")) {
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            bulk::write(&mut w, args.format.unwrap_or(Format::Csv), &devices)?;
            w.flush()?;
            Ok(())
        }
        Some(path) => {
            let format = format_of(path, args.format)?;
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            bulk::write(&mut w, format, &devices)?;
            w.flush()?;
            out.done(
                &format!("{} devices written to {}", devices.len(), path.display()),
                json!({ "devices": devices.len(), "file": path }),
            )
        }
    }
}

/// A `\r` counter on stderr while the transaction fills, only when stderr is a terminal.
struct Progress {
    on: bool,
}

impl Progress {
    fn new(lines: usize) -> Self {
        let on = std::io::stderr().is_terminal();
        if on {
            eprint!("checked {lines} lines; importing…");
        }
        Progress { on }
    }

    fn show(&self, done: usize, of: usize) {
        if self.on {
            eprint!("\r\x1b[Kimporting: {done}/{of} new devices");
        }
    }

    fn finish(&self) {
        if self.on {
            eprintln!();
        }
    }
}
