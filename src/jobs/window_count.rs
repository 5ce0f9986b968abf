//! `window-count`: `timestamp_ms<TAB>key` lines → event time from the first field (bounded
//! out-of-orderness watermarks) → key_by(key) → tumbling, sliding or session windows → one
//! `window_start_ms<TAB>window_end_ms<TAB>key<TAB>count` line per fired window; records too
//! late for every window go to `late/` inside the output directory.

use crate::jobs::{check_output_dir, fail_after, fail_after_param, FailAfter};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use weir_cli::{parse_duration, JobSpec, ParamError, ParamSpec, Params, StateSchema};
use weir_connectors::{FileLinesSource, FileSink, PrintSink};
use weir_runtime::{
    Collector, JobDefinition, KeyedContext, KeyedProcessFunction, OpenContext, OutputTag,
    StreamEnvironment, UserError, WatermarkStrategy,
};
use weir_window::{WindowExt, Windowed, Windows};

/// One input line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimedKey {
    /// Event time (ms).
    pub timestamp: i64,
    /// The key.
    pub key: String,
}

/// Reads `timestamp_ms<TAB>key`; the error quotes the line (shortened) and says what is wrong.
pub fn parse_line(line: &str) -> Result<TimedKey, UserError> {
    let shown: String = line.chars().take(80).collect();
    let (ts, key) = line
        .split_once('\t')
        .ok_or_else(|| format!("the line '{shown}' is not timestamp_ms<TAB>key (no tab)"))?;
    let timestamp = ts.trim().parse::<i64>().map_err(|_| {
        format!("the line '{shown}' does not start with a timestamp in ms ('{ts}')")
    })?;
    if key.is_empty() {
        return Err(format!("the line '{shown}' has an empty key").into());
    }
    Ok(TimedKey {
        timestamp,
        key: key.to_string(),
    })
}

/// Which windows `window-count` counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowShape {
    /// Tumbling windows of this size.
    Tumbling(Duration),
    /// Windows of `size` every `slide`.
    Sliding {
        /// Window length.
        size: Duration,
        /// Distance between window starts.
        slide: Duration,
    },
    /// Session windows closed by this gap.
    Session(Duration),
}

/// Settings of `window-count`.
#[derive(Clone, Debug)]
pub struct WindowCountOptions {
    /// Input file or directory of `timestamp_ms<TAB>key` lines.
    pub input: PathBuf,
    /// Output directory (`None`: stdout).
    pub output: Option<PathBuf>,
    /// The windows.
    pub shape: WindowShape,
    /// How far out of order records may arrive.
    pub out_of_orderness: Duration,
    /// How long windows accept late records after their end.
    pub lateness: Duration,
    /// Generate a watermark at most this often (zero: after every batch read).
    pub watermark_interval: Duration,
    /// Records per second each drill subtask lets through (`None`: as fast as it can).
    pub rate: Option<u64>,
    /// Failure injection.
    pub fail: FailAfter,
}

/// Passes records on unchanged, at most `rate` per second; fails once as [`FailAfter`] says
/// (the drill's hook).
#[derive(Clone, Default)]
struct Drill {
    fail: FailAfter,
    rate: Option<u64>,
    started: Option<std::time::Instant>,
    passed: u64,
}

impl KeyedProcessFunction<String, TimedKey, TimedKey> for Drill {
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.fail.open(ctx);
        Ok(())
    }

    fn process_element(
        &mut self,
        value: TimedKey,
        _ctx: &mut KeyedContext<'_, String>,
        out: &mut Collector<TimedKey>,
    ) -> Result<(), UserError> {
        self.fail.check()?;
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let started = *self.started.get_or_insert_with(std::time::Instant::now);
            self.passed += 1;
            let due = Duration::from_secs_f64(self.passed as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait.min(Duration::from_millis(50)));
            }
        }
        out.collect(value);
        Ok(())
    }
}

/// One output line per fired window.
pub fn format_window(w: &Windowed<String, u64>) -> String {
    format!(
        "{}\t{}\t{}\t{}",
        w.window.start, w.window.end, w.key, w.value
    )
}

/// Builds `window-count`.
pub fn window_count(o: WindowCountOptions) -> Result<JobDefinition, UserError> {
    let env = StreamEnvironment::new("window-count");
    let late = OutputTag::<TimedKey>::new("late");
    let events = env
        .add_source(FileLinesSource::new(&o.input)?)
        .uid("source")
        .try_map(|line: String| parse_line(&line))
        .uid("parse")
        .name("Parse")
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::bounded_out_of_orderness(o.out_of_orderness, |e: &TimedKey| {
                e.timestamp
            })
            .with_interval(o.watermark_interval),
        )
        .uid("watermarks");
    let keyed = events
        .key_by(|e: &TimedKey| e.key.clone())
        .process(Drill {
            fail: o.fail,
            rate: o.rate,
            ..Drill::default()
        })
        .uid("drill")
        .name("Drill")
        .with_timestamps(|e: &TimedKey| e.timestamp)
        .key_by(|e: &TimedKey| e.key.clone());
    let windows = match o.shape {
        WindowShape::Tumbling(size) => Windows::tumbling(size),
        WindowShape::Sliding { size, slide } => Windows::sliding(size, slide),
        WindowShape::Session(gap) => Windows::session(gap),
    };
    let counts = keyed
        .window(windows)
        .allowed_lateness(o.lateness)
        .side_output_late_data(&late)
        .count()?
        .uid("window");
    let lines = counts
        .map(|w: Windowed<String, u64>| format_window(&w))
        .uid("format")
        .name("Format");
    let late_lines = counts
        .side_output(&late)
        .map(|e: TimedKey| format!("{}\t{}", e.timestamp, e.key))
        .uid("late-format")
        .name("Format late");
    match &o.output {
        Some(dir) => {
            lines.sink_to(FileSink::new(dir)).uid("sink");
            late_lines
                .sink_to(FileSink::new(dir.join("late")))
                .uid("late-sink");
        }
        None => {
            lines.sink_to(PrintSink::new()).uid("sink");
            late_lines
                .map(|l: String| format!("late\t{l}"))
                .uid("late-mark")
                .sink_to(PrintSink::new())
                .uid("late-sink");
        }
    }
    Ok(env.build())
}

fn duration(params: &Params, key: &str) -> Result<Option<Duration>, ParamError> {
    params
        .raw(key)
        .map(|v| parse_duration(v).map_err(|e| params.invalid(key, e)))
        .transpose()
}

/// The catalog entry of `window-count`.
pub fn window_count_spec() -> JobSpec {
    JobSpec {
        name: "window-count",
        description: "counts timestamp_ms<TAB>key lines per key in event-time windows",
        params: vec![
            ParamSpec {
                name: "input",
                help: "a file or directory of timestamp_ms<TAB>key lines (required)",
            },
            ParamSpec {
                name: "window",
                help: "window size (default 1min)",
            },
            ParamSpec {
                name: "slide",
                help: "sliding windows: the distance between window starts",
            },
            ParamSpec {
                name: "session-gap",
                help: "session windows closed after this gap (instead of window/slide)",
            },
            ParamSpec {
                name: "out-of-orderness",
                help: "how far out of order records arrive (default 0)",
            },
            ParamSpec {
                name: "lateness",
                help: "windows accept late records this long after their end (default 0)",
            },
            ParamSpec {
                name: "output",
                help: "output directory of part files, late records in late/ (default: stdout)",
            },
            ParamSpec {
                name: "watermark-interval",
                help:
                    "generate watermarks at most this often; 0 = after every batch (default 200ms)",
            },
            ParamSpec {
                name: "rate",
                help: "drill: records per second per subtask (default: unthrottled)",
            },
            fail_after_param(),
        ],
        build: build_from_params,
        states: vec![StateSchema::value::<String, u64>(
            "window",
            "window-contents",
        )],
    }
}

fn build_from_params(params: &Params) -> Result<JobDefinition, ParamError> {
    let input: PathBuf = params.get("input")?.ok_or_else(|| ParamError::Missing {
        job: params.job().to_string(),
        key: "input".into(),
    })?;
    let window = duration(params, "window")?;
    let slide = duration(params, "slide")?;
    let gap = duration(params, "session-gap")?;
    let shape = match (window, slide, gap) {
        (_, _, Some(_)) if window.is_some() || slide.is_some() => {
            return Err(params.invalid(
                "session-gap",
                "session windows take no window or slide; give one or the other",
            ))
        }
        (None, None, Some(g)) => WindowShape::Session(g),
        (w, Some(s), None) => WindowShape::Sliding {
            size: w.unwrap_or(Duration::from_secs(60)),
            slide: s,
        },
        (w, None, None) => WindowShape::Tumbling(w.unwrap_or(Duration::from_secs(60))),
        _ => unreachable!("every combination is matched above"),
    };
    for (key, d) in [("window", window), ("slide", slide), ("session-gap", gap)] {
        if d.is_some_and(|d| d.is_zero()) {
            return Err(params.invalid(key, "must be above 0"));
        }
    }
    let output: Option<PathBuf> = params.get("output")?;
    if let Some(dir) = &output {
        check_output_dir(params, "output", dir)?;
    }
    let options = WindowCountOptions {
        input,
        output,
        shape,
        out_of_orderness: duration(params, "out-of-orderness")?.unwrap_or(Duration::ZERO),
        lateness: duration(params, "lateness")?.unwrap_or(Duration::ZERO),
        watermark_interval: duration(params, "watermark-interval")?
            .unwrap_or(weir_runtime::DEFAULT_WATERMARK_INTERVAL),
        rate: params.get("rate")?,
        fail: fail_after(params)?,
    };
    window_count(options).map_err(|e| params.invalid("input", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_that_are_not_a_timestamp_a_tab_and_a_key_are_named_in_the_error() {
        assert_eq!(
            parse_line("17\tuser-1").unwrap(),
            TimedKey {
                timestamp: 17,
                key: "user-1".into()
            }
        );
        let no_tab = parse_line("17 user").unwrap_err().to_string();
        assert!(
            no_tab.contains("'17 user'") && no_tab.contains("no tab"),
            "{no_tab}"
        );
        let bad_ts = parse_line("x\tk").unwrap_err().to_string();
        assert!(bad_ts.contains("timestamp"), "{bad_ts}");
        assert!(parse_line("5\t").is_err());
    }
}
