//! Container logs: guest stdout and stderr become timestamped lines in files under the
//! data directory (the CRI format kubelet uses), with a size cap and rotation, and are
//! read back with tail, since, timestamps, limitBytes, previous and follow.
//!
//! Per container: `current.log` (+ `current.log.1` once rotated) for the running
//! instance, and `previous.log` (+ `.1`) for the one before the last restart.

use std::collections::HashMap;
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::wasm::{OutputSink, Stream};

/// A guest line longer than this is written in parts (`P` lines), so one newline-free
/// guest cannot grow the agent's memory.
const MAX_PARTIAL_LINE: usize = 16 * 1024;

/// A pod's container logs, by container name.
type PodLogs = HashMap<String, Arc<ContainerLog>>;

/// The container logs of the pods on this agent, by namespace and pod name.
#[derive(Default)]
pub struct LogRegistry {
    pods: Mutex<HashMap<(String, String), PodLogs>>,
}

impl LogRegistry {
    pub fn get(&self, namespace: &str, pod: &str, container: &str) -> Option<Arc<ContainerLog>> {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        pods.get(&(namespace.to_string(), pod.to_string()))?
            .get(container)
            .cloned()
    }

    pub fn containers(&self, namespace: &str, pod: &str) -> Vec<String> {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        pods.get(&(namespace.to_string(), pod.to_string()))
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn insert(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        log: Arc<ContainerLog>,
    ) {
        let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        pods.entry((namespace.to_string(), pod.to_string()))
            .or_default()
            .insert(container.to_string(), log);
    }

    pub fn remove(&self, namespace: &str, pod: &str) {
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(namespace.to_string(), pod.to_string()));
    }
}

struct Writer {
    file: Option<std::fs::File>,
    size: u64,
    partial: [Vec<u8>; 2],
}

/// The log of one container of one pod.
pub struct ContainerLog {
    dir: PathBuf,
    max_bytes: u64,
    writer: Mutex<Writer>,
    /// Bumped on every write and when the instance ends, to wake followers.
    changed: tokio::sync::watch::Sender<u64>,
    /// Whether an instance is writing now (followers stop when it ends).
    running: std::sync::atomic::AtomicBool,
}

fn now_nanos() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        .to_string()
}

impl ContainerLog {
    /// The log of a container, kept in `dir`. Nothing is made on disk until the first
    /// `start_instance`, which a container calls once its instance is reported running:
    /// creating a directory and a file on a busy filesystem can take milliseconds, and a
    /// pod's start waits for none of it.
    pub fn open(dir: PathBuf, max_bytes: u64) -> ContainerLog {
        let (changed, _) = tokio::sync::watch::channel(0);
        ContainerLog {
            dir,
            max_bytes,
            writer: Mutex::new(Writer {
                file: None,
                size: 0,
                partial: [Vec::new(), Vec::new()],
            }),
            changed,
            running: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn current(&self) -> PathBuf {
        self.dir.join("current.log")
    }

    fn previous(&self) -> PathBuf {
        self.dir.join("previous.log")
    }

    /// A new instance starts: what was current becomes previous (if it ever ran).
    pub fn start_instance(&self, after_restart: bool) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.file = None;
        if after_restart {
            for suffix in ["", ".1"] {
                let from = PathBuf::from(format!("{}{suffix}", self.current().display()));
                let to = PathBuf::from(format!("{}{suffix}", self.previous().display()));
                let _ = std::fs::remove_file(&to);
                if from.exists() {
                    std::fs::rename(&from, &to)?;
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.current())?;
        w.size = file.metadata()?.len();
        w.file = Some(file);
        w.partial = [Vec::new(), Vec::new()];
        self.running
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The instance ended: flush what is left and release followers.
    pub fn end_instance(&self) {
        {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            for i in 0..2 {
                let rest = std::mem::take(&mut w.partial[i]);
                if !rest.is_empty() {
                    self.write_line(&mut w, if i == 0 { "stdout" } else { "stderr" }, &rest, "F");
                }
            }
            w.file = None;
        }
        self.running
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.changed.send_modify(|n| *n += 1);
    }

    fn write_line(&self, w: &mut Writer, stream: &str, line: &[u8], tag: &str) {
        if w.size >= self.max_bytes {
            // Rotate: keep one older file, so a chatty guest is bounded to about 2x the cap.
            let rotated = PathBuf::from(format!("{}.1", self.current().display()));
            let _ = std::fs::rename(self.current(), rotated);
            w.file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.current())
                .ok();
            w.size = 0;
        }
        let Some(file) = w.file.as_mut() else { return };
        let mut out = Vec::with_capacity(line.len() + 48);
        out.extend_from_slice(now_nanos().as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        out.push(b' ');
        out.extend_from_slice(line);
        out.push(b'\n');
        if file.write_all(&out).is_ok() {
            w.size += out.len() as u64;
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The log files of the current or previous instance, oldest first.
    pub fn files(&self, previous: bool) -> Vec<PathBuf> {
        let base = if previous {
            self.previous()
        } else {
            self.current()
        };
        [PathBuf::from(format!("{}.1", base.display())), base]
            .into_iter()
            .filter(|p| p.exists())
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl OutputSink for ContainerLog {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        let (idx, name) = match stream {
            Stream::Stdout => (0, "stdout"),
            Stream::Stderr => (1, "stderr"),
        };
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut rest = bytes;
        while !rest.is_empty() {
            match rest.iter().position(|b| *b == b'\n') {
                Some(pos) => {
                    let mut line = std::mem::take(&mut w.partial[idx]);
                    line.extend_from_slice(&rest[..pos]);
                    self.write_line(&mut w, name, &line, "F");
                    rest = &rest[pos + 1..];
                }
                None => {
                    w.partial[idx].extend_from_slice(rest);
                    rest = &[];
                    while w.partial[idx].len() >= MAX_PARTIAL_LINE {
                        let tail = w.partial[idx].split_off(MAX_PARTIAL_LINE);
                        let part = std::mem::replace(&mut w.partial[idx], tail);
                        self.write_line(&mut w, name, &part, "P");
                    }
                }
            }
        }
        drop(w);
        self.changed.send_modify(|n| *n += 1);
    }
}

/// What a log read asks for (the `pods/log` query parameters).
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub previous: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<jiff::Timestamp>,
    pub timestamps: bool,
    pub limit_bytes: Option<usize>,
    pub follow: bool,
}

/// One stored line, split into its timestamp and what the guest wrote.
struct Line<'a> {
    time: &'a str,
    text: &'a [u8],
    partial: bool,
}

fn parse_line(raw: &[u8]) -> Option<Line<'_>> {
    let mut parts = raw.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default();
    Some(Line {
        time,
        text,
        partial: tag == b"P",
    })
}

/// Renders stored lines as the client wants them.
pub fn render(raw_lines: &[Vec<u8>], q: &LogQuery) -> Vec<u8> {
    let mut out = Vec::new();
    for raw in raw_lines {
        let Some(line) = parse_line(raw) else {
            continue;
        };
        if let Some(since) = q.since
            && line
                .time
                .parse::<jiff::Timestamp>()
                .is_ok_and(|t| t < since)
        {
            continue;
        }
        if q.timestamps {
            out.extend_from_slice(line.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(line.text);
        if !line.partial {
            out.push(b'\n');
        }
    }
    out
}

/// Reads the stored lines of the given files (oldest first), keeping the last `tail`.
pub fn read_lines(files: &[PathBuf], tail: Option<usize>) -> std::io::Result<(Vec<Vec<u8>>, u64)> {
    let mut lines = std::collections::VecDeque::new();
    let mut end_offset = 0;
    for (i, path) in files.iter().enumerate() {
        let mut f = std::io::BufReader::new(std::fs::File::open(path)?);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = f.read_until(b'\n', &mut buf)?;
            if n == 0 || !buf.ends_with(b"\n") {
                break;
            }
            buf.pop();
            lines.push_back(buf.clone());
            if tail.is_some_and(|t| lines.len() > t) {
                lines.pop_front();
            }
        }
        if i == files.len() - 1 {
            end_offset = f.stream_position()?;
        }
    }
    Ok((lines.into_iter().collect(), end_offset))
}

/// Reads whole lines appended to `path` after `offset`; returns them and the new offset.
pub fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<Vec<u8>>, u64)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len < offset {
        // Rotated underneath us: start the new file from its beginning.
        return read_from(path, 0);
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let complete = buf
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    let lines = buf[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    Ok((lines, offset + complete as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_stamped_and_rendered() {
        let dir = tempfile::tempdir().unwrap();
        let log = ContainerLog::open(dir.path().join("c"), 1 << 20);
        log.start_instance(false).unwrap();
        log.write(Stream::Stdout, b"one\ntw");
        log.write(Stream::Stderr, b"err\n");
        log.write(Stream::Stdout, b"o\nthree");
        log.end_instance();
        let (lines, _) = read_lines(&log.files(false), None).unwrap();
        let plain = render(&lines, &LogQuery::default());
        assert_eq!(String::from_utf8(plain).unwrap(), "one\nerr\ntwo\nthree\n");
        let (tail, _) = read_lines(&log.files(false), Some(2)).unwrap();
        assert_eq!(render(&tail, &LogQuery::default()), b"two\nthree\n");
        let stamped = String::from_utf8(render(
            &tail,
            &LogQuery {
                timestamps: true,
                ..Default::default()
            },
        ))
        .unwrap();
        assert!(stamped.lines().all(|l| l.contains("Z ")), "{stamped}");
    }

    #[test]
    fn restart_moves_current_to_previous_and_size_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let log = ContainerLog::open(dir.path().join("c"), 200);
        log.start_instance(false).unwrap();
        log.write(Stream::Stdout, b"first run\n");
        log.end_instance();
        log.start_instance(true).unwrap();
        for i in 0..100 {
            log.write(Stream::Stdout, format!("line {i}\n").as_bytes());
        }
        let (prev, _) = read_lines(&log.files(true), None).unwrap();
        assert_eq!(render(&prev, &LogQuery::default()), b"first run\n");
        let total: u64 = log
            .files(false)
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(
            total < 600,
            "two files of about the cap at most, got {total}"
        );
        let (cur, _) = read_lines(&log.files(false), Some(1)).unwrap();
        assert_eq!(render(&cur, &LogQuery::default()), b"line 99\n");
    }

    #[test]
    fn long_lines_are_written_in_parts() {
        let dir = tempfile::tempdir().unwrap();
        let log = ContainerLog::open(dir.path().join("c"), 1 << 30);
        log.start_instance(false).unwrap();
        log.write(Stream::Stdout, &vec![b'x'; MAX_PARTIAL_LINE * 2 + 5]);
        log.end_instance();
        let (lines, _) = read_lines(&log.files(false), None).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            render(&lines, &LogQuery::default()).len(),
            MAX_PARTIAL_LINE * 2 + 6
        );
    }
}
