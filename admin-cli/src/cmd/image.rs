//! `weft lun import FILE|- NAME` and `weft lun export NAME FILE|-`: disk
//! images into and out of a LUN, over the volume client with the admin
//! certificate (the data path itself, not iSCSI).
//!
//! - Raw images are copied as they are. Any other format (qcow2, vmdk,
//!   vhdx, …) goes through `qemu-img`: import converts it to a raw
//!   temporary file first (in `$TMPDIR`, sparse); export writes raw and
//!   converts when the format asks for it (`--format`, or a name ending in
//!   `.qcow2`). Without `qemu-img` such images are refused with what to
//!   install.
//! - Import writes [`IO_BYTES`] at a time, [`IO_INFLIGHT_MAX`] in flight;
//!   a run of zeroes is unmapped instead of written (it reads back as
//!   zeroes, and a sparse image allocates nothing), then flushes. Bytes
//!   of the LUN past the image keep what they held.
//! - Export reads the whole LUN in order, with as many reads in flight;
//!   into a regular file it leaves zeroes as holes.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use fabric::metadata::catalogue::AdminState;
use fabric::metadata::client::MetaClientError;
use fabric::metadata::rpc::{ReadReply, ReadRequest};
use fabric::metadata::Lun;
use fabric::volume::{Volume, VolumeError};
use fabric::wire::extent::EXTENT_IO_BYTES_MAX;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::datapath::Fabric;
use crate::error::{CliError, CliResult};
use crate::progress::{mib_per_s, Progress};
use crate::render::{emit, Output, OutputArg};
use crate::session::Prepared;
use crate::units::format_size;
use crate::GlobalArgs;

/// Bytes per write or read: the largest one extent call carries.
pub const IO_BYTES: usize = EXTENT_IO_BYTES_MAX as usize;
/// Writes or reads in flight at once. 16 × 4 MiB imports 256 MiB at
/// 145–165 MiB/s on the 2-core test machine (4 chunkservers, 3+1), 8 at
/// 117–138 MiB/s.
pub const IO_INFLIGHT_MAX: usize = 16;
/// Pieces queued between the file and the cluster (the reader stays this
/// far ahead of the writes; the writer this far behind the reads). Memory
/// at most ([`IO_INFLIGHT_MAX`] + this) × [`IO_BYTES`]: 80 MiB.
pub const IO_QUEUE_MAX: usize = 4;
/// How long to wait for gossip to give the chunkservers' addresses.
const ADDRS_WAIT_MS: u64 = 10_000;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The image: a file (raw, or any format qemu-img reads), or - for raw
    /// bytes on stdin.
    #[arg(value_name = "FILE|-")]
    pub source: String,
    /// The LUN to write into: it must exist and be at least as large as
    /// the image.
    pub name: String,
    /// The image's format (default: what qemu-img info says, else raw).
    #[arg(long, short = 'f', value_name = "FORMAT")]
    pub format: Option<String>,
    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The LUN to read.
    pub name: String,
    /// Where to write: a file, or - for raw bytes on stdout.
    #[arg(value_name = "FILE|-")]
    pub dest: String,
    /// The image format to write: raw, or anything qemu-img writes
    /// (default: qcow2 if FILE ends in .qcow2, else raw).
    #[arg(long, short = 'f', value_name = "FORMAT")]
    pub format: Option<String>,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub out: OutputArg,
}

/// What `import` and `export` print when done.
#[derive(Serialize, Debug)]
struct CopyJson {
    lun: String,
    /// The file, or `-`.
    file: String,
    format: String,
    bytes: u64,
    size: String,
    seconds: f64,
    mib_per_s: f64,
}

/// `qemu-img` on PATH, if installed.
pub fn qemu_img() -> Option<PathBuf> {
    crate::cmd::up::find_on_path("qemu-img")
}

fn no_qemu_img(what: &str) -> CliError {
    CliError::Failed(anyhow::anyhow!(
        "{what} needs qemu-img, which is not on PATH: install it (Debian/Ubuntu: apt install qemu-utils; Fedora: dnf install qemu-img) or use a raw image"
    ))
}

/// A format qemu-img would name, guessed from the first bytes, for a
/// clear refusal when qemu-img is missing. Raw has no magic.
fn sniff_format(head: &[u8]) -> Option<&'static str> {
    const MAGICS: &[(&[u8], &str)] = &[
        (b"QFI\xfb", "qcow2"),
        (b"KDMV", "vmdk"),
        (b"vhdxfile", "vhdx"),
        (b"conectix", "vpc"),
        (b"<<< Oracle VM VirtualBox Disk Image >>>", "vdi"),
    ];
    MAGICS
        .iter()
        .find(|(m, _)| head.starts_with(m))
        .map(|(_, f)| *f)
}

/// `qemu-img info`: the image's format and virtual size.
fn qemu_img_info(qemu: &Path, file: &Path, format: Option<&str>) -> CliResult<(String, u64)> {
    let mut cmd = Process::new(qemu);
    cmd.args(["info", "--output=json", "--force-share"]);
    if let Some(f) = format {
        cmd.args(["-f", f]);
    }
    let out = cmd
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(format!("cannot run {}: {e}", qemu.display())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(failed(format!(
            "qemu-img info {} failed: {}",
            file.display(),
            err.trim().lines().last().unwrap_or("no message")
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        failed(format!(
            "qemu-img info printed something else than JSON: {e}"
        ))
    })?;
    let fmt = v["format"].as_str().unwrap_or("raw").to_string();
    let size = v["virtual-size"]
        .as_u64()
        .ok_or_else(|| failed("qemu-img info gave no virtual-size".into()))?;
    Ok((fmt, size))
}

fn failed(msg: String) -> CliError {
    CliError::Failed(anyhow::anyhow!(msg))
}

/// A file deleted when dropped (the raw copy a conversion goes through).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run_qemu_img(qemu: &Path, args: &[&std::ffi::OsStr]) -> CliResult<()> {
    let out = Process::new(qemu)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(format!("cannot run {}: {e}", qemu.display())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(failed(format!(
            "qemu-img convert failed: {}",
            err.trim().lines().last().unwrap_or("no message")
        )));
    }
    Ok(())
}

/// The bytes to import.
enum Source {
    Stdin,
    /// A raw file (or block device) of `size` bytes.
    Raw {
        path: PathBuf,
        size: u64,
    },
    /// An image qemu-img converts to raw first.
    Convert {
        path: PathBuf,
        format: String,
        virtual_size: u64,
        qemu: PathBuf,
    },
}

impl Source {
    /// Checks the source before anything is sent to the cluster.
    fn plan(source: &str, format: Option<&str>) -> CliResult<Source> {
        if source == "-" {
            if format.is_some_and(|f| f != "raw") {
                return Err(CliError::Usage(
                    "stdin is read as a raw image: convert it first (qemu-img convert -O raw …) or give a file".into(),
                ));
            }
            return Ok(Source::Stdin);
        }
        let path = PathBuf::from(source);
        let mut f = File::open(&path)
            .map_err(|e| failed(format!("cannot open {}: {e}", path.display())))?;
        let size = f
            .seek(SeekFrom::End(0))
            .map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
        let mut head = [0u8; 64];
        f.seek(SeekFrom::Start(0)).ok();
        let n = read_full(&mut f, &mut head).unwrap_or(0);
        let sniffed = sniff_format(&head[..n]);
        let qemu = qemu_img();
        let (fmt, virtual_size) = match (&qemu, format) {
            (_, Some("raw")) => ("raw".to_string(), size),
            (Some(q), f) => qemu_img_info(q, &path, f)?,
            (None, Some(f)) => return Err(no_qemu_img(&format!("importing a {f} image"))),
            (None, None) => match sniffed {
                Some(f) => {
                    return Err(no_qemu_img(&format!(
                        "{} looks like a {f} image: importing it",
                        path.display()
                    )))
                }
                None => ("raw".to_string(), size),
            },
        };
        if fmt == "raw" {
            return Ok(Source::Raw { path, size });
        }
        Ok(Source::Convert {
            path,
            format: fmt,
            virtual_size,
            qemu: qemu.expect("a non-raw format comes from qemu-img"),
        })
    }

    fn format(&self) -> &str {
        match self {
            Source::Convert { format, .. } => format,
            _ => "raw",
        }
    }

    /// Bytes the LUN must hold, when known before reading.
    fn size(&self) -> Option<u64> {
        match self {
            Source::Stdin => None,
            Source::Raw { size, .. } => Some(*size),
            Source::Convert { virtual_size, .. } => Some(*virtual_size),
        }
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn is_zero(buf: &[u8]) -> bool {
    let mut words = buf.chunks_exact(8);
    words.all(|w| w == [0u8; 8]) && words.remainder().iter().all(|b| *b == 0)
}

/// `--size` for a resize hint: `bytes` rounded up to whole MiB (or GiB).
fn size_arg(bytes: u64) -> String {
    let mib = bytes.div_ceil(1 << 20);
    if mib.is_multiple_of(1024) {
        format!("{}G", mib / 1024)
    } else {
        format!("{mib}M")
    }
}

fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start a runtime: {e}")))
}

/// The LUN's record and its volume client, once gossip gave the
/// chunkservers' addresses.
async fn open_volume(p: &Prepared, name: &str) -> CliResult<(Fabric, Lun, Arc<Volume>)> {
    let fabric = p.fabric().await?;
    let meta_err = |e: MetaClientError| CliError::from_client(e, &p.config_path);
    let lun = match fabric
        .meta
        .read(ReadRequest::Lun {
            name: name.to_string(),
        })
        .await
        .map_err(meta_err)?
    {
        ReadReply::Lun(l) => l,
        _ => return Err(failed("the cluster answered a LUN read with something else: is it running another version of weft?".into())),
    };
    let nodes: Vec<_> = match fabric
        .meta
        .read(ReadRequest::Summary)
        .await
        .map_err(meta_err)?
    {
        ReadReply::Summary(s) => s
            .nodes
            .iter()
            .filter(|n| matches!(n.admin, AdminState::In | AdminState::Draining))
            .map(|n| n.id.clone())
            .collect(),
        _ => Vec::new(),
    };
    // Later ones may still come: the volume client reads the view as it goes.
    fabric
        .wait_for_addrs(&nodes, Duration::from_millis(ADDRS_WAIT_MS))
        .await;
    let vol = fabric
        .volume(lun.clone())
        .map_err(|e| failed(format!("LUN {name}: {e}")))?;
    Ok((fabric, lun, Arc::new(vol)))
}

fn volume_error(e: VolumeError, what: &str, config: &Path) -> CliError {
    match e {
        VolumeError::Meta(m) => CliError::from_client(m, config),
        e => failed(format!("{what}: {e}")),
    }
}

fn too_large(image: &str, size: u64, lun: &Lun) -> CliError {
    CliError::Rejected(format!(
        "{image} is {} ({size} bytes) but LUN {} is only {}: grow the LUN first (weft lun resize {} --size {})",
        format_size(size),
        lun.name,
        format_size(lun.size_bytes),
        lun.name,
        size_arg(size)
    ))
}

pub fn import(global: &GlobalArgs, a: ImportArgs) -> CliResult<()> {
    let source = Source::plan(&a.source, a.format.as_deref())?;
    let p = Prepared::open(global)?;
    let rt = runtime()?;
    let done = rt.block_on(import_async(&p, &source, &a.name))?;
    let file = if a.source == "-" {
        "-".into()
    } else {
        a.source.clone()
    };
    let j = CopyJson {
        lun: a.name.clone(),
        file,
        format: source.format().to_string(),
        bytes: done.0,
        size: format_size(done.0),
        seconds: round3(done.1.as_secs_f64()),
        mib_per_s: round3(mib_per_s(done.0, done.1)),
    };
    emit(a.out, &j, || {
        format!(
            "imported {} ({}, {}) into LUN {} in {:.1} s: {:.1} MiB/s",
            if j.file == "-" { "stdin" } else { &j.file },
            j.format,
            j.size,
            j.lun,
            j.seconds,
            j.mib_per_s
        )
    });
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

enum Piece {
    /// Offset, bytes (padded to the block size), bytes of the image.
    Data(u64, Vec<u8>, u64),
    Fail(CliError),
}

/// Reads `input` in [`IO_BYTES`] pieces into `tx`; the last piece is
/// padded with zeroes to the block size.
fn reader(
    mut input: Box<dyn Read + Send>,
    label: String,
    lun_size: u64,
    lun: Lun,
    block: u64,
    tx: tokio::sync::mpsc::Sender<Piece>,
) {
    let mut offset = 0u64;
    loop {
        let mut buf = vec![0u8; IO_BYTES];
        let n = match read_full(&mut input, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.blocking_send(Piece::Fail(failed(format!("reading {label}: {e}"))));
                return;
            }
        };
        if n == 0 {
            return;
        }
        if offset + n as u64 > lun_size {
            // Only a stream gets here (a file's size is checked first).
            let mut e = too_large(&label, offset + n as u64, &lun).to_string();
            e.push_str(&format!("; the first {} were written", format_size(offset)));
            let _ = tx.blocking_send(Piece::Fail(CliError::Rejected(e)));
            return;
        }
        buf.truncate((n as u64).next_multiple_of(block) as usize);
        if tx
            .blocking_send(Piece::Data(offset, buf, n as u64))
            .is_err()
        {
            return;
        }
        offset += n as u64;
        if n < IO_BYTES {
            return;
        }
    }
}

/// Returns the image bytes written and the time taken.
async fn import_async(p: &Prepared, source: &Source, name: &str) -> CliResult<(u64, Duration)> {
    let (_fabric, lun, vol) = open_volume(p, name).await?;
    let label = match source {
        Source::Stdin => "stdin".to_string(),
        Source::Raw { path, .. } | Source::Convert { path, .. } => path.display().to_string(),
    };
    if let Some(size) = source.size() {
        if size > lun.size_bytes {
            return Err(too_large(&label, size, &lun));
        }
    }
    // A converted image is read from its raw copy.
    let mut _temp = None;
    let (input, total): (Box<dyn Read + Send>, Option<u64>) = match source {
        Source::Stdin => (Box::new(std::io::stdin()), None),
        Source::Raw { path, size } => (
            Box::new(File::open(path).map_err(|e| failed(format!("cannot open {label}: {e}")))?),
            Some(*size),
        ),
        Source::Convert {
            path,
            format,
            virtual_size,
            qemu,
        } => {
            let tmp = TempFile(std::env::temp_dir().join(format!(
                "weft-import-{}-{}.raw",
                std::process::id(),
                name
            )));
            if std::io::stderr().is_terminal() {
                eprint!("converting {label} ({format}) to raw with qemu-img …");
            }
            let r = run_qemu_img(
                qemu,
                &[
                    "convert".as_ref(),
                    "-f".as_ref(),
                    format.as_ref(),
                    "-O".as_ref(),
                    "raw".as_ref(),
                    path.as_os_str(),
                    tmp.0.as_os_str(),
                ],
            );
            if std::io::stderr().is_terminal() {
                eprint!("\r\x1b[K");
            }
            r?;
            let f = File::open(&tmp.0)
                .map_err(|e| failed(format!("cannot open {}: {e}", tmp.0.display())))?;
            _temp = Some(tmp);
            (Box::new(f), Some(*virtual_size))
        }
    };
    let block = u64::from(lun.block_size).max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel(IO_QUEUE_MAX);
    {
        let (label, lun) = (label.clone(), lun.clone());
        let size = lun.size_bytes;
        std::thread::spawn(move || reader(input, label, size, lun, block, tx));
    }
    let mut progress = Progress::new(&format!("import {name}"), total);
    let mut inflight: JoinSet<Result<u64, (u64, VolumeError)>> = JoinSet::new();
    let mut image_bytes = 0u64;
    let what = |off: u64| format!("writing LUN {name} at byte {off}");
    loop {
        while inflight.len() >= IO_INFLIGHT_MAX {
            let n = joined(inflight.join_next().await, &what, &p.config_path)?;
            progress.add(n);
        }
        let piece = tokio::select! {
            biased;
            Some(r) = inflight.join_next(), if !inflight.is_empty() => {
                progress.add(joined(Some(r), &what, &p.config_path)?);
                continue;
            }
            piece = rx.recv() => piece,
        };
        match piece {
            None => break,
            Some(Piece::Fail(e)) => return Err(e),
            Some(Piece::Data(off, buf, n)) => {
                let len = buf.len() as u64;
                image_bytes = (off + n).max(image_bytes);
                let vol = vol.clone();
                inflight.spawn(async move {
                    let r = if buf.len() == IO_BYTES && is_zero(&buf) {
                        vol.unmap(off, len).await
                    } else {
                        vol.write(off, Bytes::from(buf), false).await
                    };
                    r.map(|_| len).map_err(|e| (off, e))
                });
            }
        }
    }
    while let Some(r) = inflight.join_next().await {
        progress.add(joined(Some(r), &what, &p.config_path)?);
    }
    vol.flush()
        .await
        .map_err(|e| volume_error(e, &format!("flushing LUN {name}"), &p.config_path))?;
    let elapsed = progress.elapsed();
    progress.finish();
    Ok((total.unwrap_or(image_bytes), elapsed))
}

type Joined = Option<Result<Result<u64, (u64, VolumeError)>, tokio::task::JoinError>>;

fn joined(r: Joined, what: &dyn Fn(u64) -> String, config: &Path) -> CliResult<u64> {
    match r {
        None => Ok(0),
        Some(Ok(Ok(n))) => Ok(n),
        Some(Ok(Err((off, e)))) => Err(volume_error(e, &what(off), config)),
        Some(Err(e)) => Err(failed(format!("an I/O task failed: {e}"))),
    }
}

/// Where an export goes.
enum Dest {
    Stdout,
    /// A raw file (or block device).
    Raw(PathBuf),
    /// An image qemu-img writes from a raw copy.
    Convert {
        path: PathBuf,
        format: String,
        qemu: PathBuf,
    },
}

impl Dest {
    fn plan(dest: &str, format: Option<&str>, force: bool) -> CliResult<Dest> {
        if dest == "-" {
            if format.is_some_and(|f| f != "raw") {
                return Err(CliError::Usage(
                    "stdout gets a raw image: give a file name to write another format".into(),
                ));
            }
            if std::io::stdout().is_terminal() {
                return Err(CliError::Usage(
                    "refusing to write a disk image to the terminal: redirect stdout (> disk.raw) or give a file name".into(),
                ));
            }
            return Ok(Dest::Stdout);
        }
        let path = PathBuf::from(dest);
        let meta = std::fs::metadata(&path).ok();
        if meta.as_ref().is_some_and(|m| m.is_file()) && !force {
            return Err(CliError::Usage(format!(
                "{} exists: add --force to overwrite it",
                path.display()
            )));
        }
        let format = match format {
            Some(f) => f.to_string(),
            None if dest.ends_with(".qcow2") => "qcow2".into(),
            None => "raw".into(),
        };
        if format == "raw" {
            return Ok(Dest::Raw(path));
        }
        let qemu = qemu_img().ok_or_else(|| no_qemu_img(&format!("writing a {format} image")))?;
        Ok(Dest::Convert { path, format, qemu })
    }

    fn format(&self) -> &str {
        match self {
            Dest::Convert { format, .. } => format,
            _ => "raw",
        }
    }
}

pub fn export(global: &GlobalArgs, a: ExportArgs) -> CliResult<()> {
    let dest = Dest::plan(&a.dest, a.format.as_deref(), a.force)?;
    let p = Prepared::open(global)?;
    let rt = runtime()?;
    let (bytes, elapsed) = rt.block_on(export_async(&p, &dest, &a.name))?;
    let j = CopyJson {
        lun: a.name.clone(),
        file: a.dest.clone(),
        format: dest.format().to_string(),
        bytes,
        size: format_size(bytes),
        seconds: round3(elapsed.as_secs_f64()),
        mib_per_s: round3(mib_per_s(bytes, elapsed)),
    };
    let text = format!(
        "exported LUN {} ({}) to {} ({}) in {:.1} s: {:.1} MiB/s",
        j.lun,
        j.size,
        if j.file == "-" { "stdout" } else { &j.file },
        j.format,
        j.seconds,
        j.mib_per_s
    );
    if matches!(dest, Dest::Stdout) {
        // stdout holds the image: the summary goes beside it.
        match a.out.output {
            Output::Json => eprintln!("{}", serde_json::to_string(&j).unwrap_or_default()),
            Output::Text => eprintln!("{text}"),
        }
    } else {
        emit(a.out, &j, || text);
    }
    Ok(())
}

/// Where the writer thread puts the bytes.
enum Sink {
    Stdout,
    /// A regular file gets holes for zeroes (`sparse`); a block device
    /// gets every byte.
    File {
        file: File,
        sparse: bool,
    },
}

fn writer(
    mut sink: Sink,
    size: u64,
    mut rx: tokio::sync::mpsc::Receiver<(u64, Bytes)>,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    while let Some((off, data)) = rx.blocking_recv() {
        match &mut sink {
            Sink::Stdout => out.write_all(&data)?,
            Sink::File { file, sparse } => {
                if !(*sparse && is_zero(&data)) {
                    file.write_all_at(&data, off)?;
                }
            }
        }
    }
    match sink {
        Sink::Stdout => out.flush(),
        Sink::File { file, sparse } => {
            if sparse {
                file.set_len(size)?;
            }
            file.sync_all()
        }
    }
}

async fn export_async(p: &Prepared, dest: &Dest, name: &str) -> CliResult<(u64, Duration)> {
    let (_fabric, lun, vol) = open_volume(p, name).await?;
    let size = lun.size_bytes;
    let open = |path: &Path| -> CliResult<Sink> {
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?;
        let sparse = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        Ok(Sink::File { file, sparse })
    };
    let mut _temp = None;
    let (sink, label) = match dest {
        Dest::Stdout => (Sink::Stdout, "stdout".to_string()),
        Dest::Raw(path) => (open(path)?, path.display().to_string()),
        Dest::Convert { path, .. } => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let tmp = TempFile(dir.join(format!(
                ".{}.weft-export-{}.raw",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                std::process::id()
            )));
            let sink = open(&tmp.0)?;
            _temp = Some(tmp);
            (sink, path.display().to_string())
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<(u64, Bytes)>(IO_QUEUE_MAX);
    let writer = std::thread::spawn(move || writer(sink, size, rx));
    let mut progress = Progress::new(&format!("export {name}"), Some(size));
    let mut pending: VecDeque<(u64, tokio::task::JoinHandle<Result<Bytes, VolumeError>>)> =
        VecDeque::new();
    let mut next = 0u64;
    let mut write_failed = false;
    loop {
        while pending.len() < IO_INFLIGHT_MAX && next < size {
            let len = (size - next).min(IO_BYTES as u64);
            let vol = vol.clone();
            let off = next;
            pending.push_back((off, tokio::spawn(async move { vol.read(off, len).await })));
            next += len;
        }
        let Some((off, h)) = pending.pop_front() else {
            break;
        };
        let data = h
            .await
            .map_err(|e| failed(format!("a read task failed: {e}")))?
            .map_err(|e| {
                volume_error(
                    e,
                    &format!("reading LUN {name} at byte {off}"),
                    &p.config_path,
                )
            })?;
        let n = data.len() as u64;
        if tx.send((off, data)).await.is_err() {
            write_failed = true;
            break;
        }
        progress.add(n);
    }
    drop(tx);
    let written = writer
        .join()
        .map_err(|_| failed("the writer thread panicked".into()))?;
    if let Err(e) = written {
        return Err(failed(format!("writing {label}: {e}")));
    }
    assert!(!write_failed, "the writer stopped early without an error");
    let elapsed = progress.elapsed();
    progress.finish();
    if let Dest::Convert {
        path, format, qemu, ..
    } = dest
    {
        let tmp = _temp
            .as_ref()
            .expect("a conversion writes a raw copy first");
        run_qemu_img(
            qemu,
            &[
                "convert".as_ref(),
                "-f".as_ref(),
                "raw".as_ref(),
                "-O".as_ref(),
                format.as_ref(),
                tmp.0.as_os_str(),
                path.as_os_str(),
            ],
        )?;
    }
    Ok((size, elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_magic() {
        let table: &[(&[u8], Option<&str>)] = &[
            (b"QFI\xfb\0\0\0\x03", Some("qcow2")),
            (b"KDMV\x01", Some("vmdk")),
            (b"vhdxfile....", Some("vhdx")),
            (b"\xeb\x63\x90", None),
            (b"", None),
        ];
        for (head, want) in table {
            assert_eq!(sniff_format(head), *want, "{head:?}");
        }
    }

    #[test]
    fn zeroes() {
        assert!(is_zero(&[0; 4099]));
        for i in [0, 7, 8, 4095, 4098] {
            let mut b = vec![0; 4099];
            b[i] = 1;
            assert!(!is_zero(&b), "{i}");
        }
        assert!(is_zero(&[]));
    }

    #[test]
    fn too_large_says_how_to_grow() {
        let lun = Lun {
            id: 1,
            name: "demo".into(),
            size_bytes: 1 << 30,
            block_size: 512,
            policy: fabric::placement::Policy::new(fabric::placement::EcProfile { k: 3, m: 1 }),
            chunk_bytes: 16 << 20,
            stripe_unit: 4096,
            naa: [0; 16],
            serial: String::new(),
            created_ms: 0,
        };
        let e = too_large("big.img", 3 << 29, &lun).to_string();
        assert_eq!(
            e,
            "big.img is 1.50 GiB (1610612736 bytes) but LUN demo is only 1 GiB: grow the LUN first (weft lun resize demo --size 1536M)"
        );
    }
}
