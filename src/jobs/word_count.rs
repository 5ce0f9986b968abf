//! `word-count`: lines → words → key_by(word) → running count in ValueState → `word<TAB>count`
//! updates to a file sink (or stdout).

use crate::jobs::{check_output_dir, fail_after, fail_after_param, FailAfter};
use std::path::PathBuf;
use weir_cli::{JobSpec, ParamError, ParamSpec, Params, StateSchema};
use weir_connectors::{FileLinesSource, FileSink, PrintSink, SocketTextSource};
use weir_runtime::{
    Collector, JobDefinition, KeyedContext, KeyedProcessFunction, OpenContext, StreamEnvironment,
    UserError,
};
use weir_state::ValueState;

/// Keeps each word's running count and emits `word<TAB>count` on every occurrence.
#[derive(Clone, Default)]
pub struct WordCounter {
    count: Option<ValueState<u64>>,
    fail: FailAfter,
}

impl WordCounter {
    /// A counter that fails as `fail` says (see [`FailAfter`]).
    pub fn with_failure(fail: FailAfter) -> Self {
        Self { count: None, fail }
    }
}

impl KeyedProcessFunction<String, String, String> for WordCounter {
    fn open(&mut self, states: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.count = Some(states.value_state("count")?);
        self.fail.open(states);
        Ok(())
    }

    fn process_element(
        &mut self,
        word: String,
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Collector<String>,
    ) -> Result<(), UserError> {
        self.fail.check()?;
        let state = self.count.as_ref().ok_or("WordCounter used before open")?;
        let count = state.get(ctx)?.unwrap_or(0) + 1;
        state.update(ctx, &count)?;
        out.collect(format!("{word}\t{count}"));
        Ok(())
    }
}

/// Where `word-count` reads its lines.
#[derive(Clone, Debug)]
pub enum WordCountInput {
    /// A text file or a directory of them (replayable, parallel).
    Files(PathBuf),
    /// A TCP socket sending text, read until it closes (parallelism 1, not replayable).
    Socket {
        /// Host to connect to.
        host: String,
        /// Port to connect to.
        port: u16,
    },
}

/// Builds `word-count` over `input`, writing to `output` (a directory) or, when `None`, to
/// stdout.
pub fn word_count(
    input: WordCountInput,
    output: Option<PathBuf>,
    fail: FailAfter,
) -> Result<JobDefinition, UserError> {
    let env = StreamEnvironment::new("word-count");
    let lines = match input {
        WordCountInput::Files(path) => env.add_source(FileLinesSource::new(path)?),
        WordCountInput::Socket { host, port } => env.add_source(SocketTextSource::new(host, port)),
    };
    let counts = lines
        .uid("source")
        .flat_map(|line: String| {
            line.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .uid("tokenize")
        .name("Tokenize")
        .key_by(|word: &String| word.clone())
        .process(WordCounter::with_failure(fail))
        .uid("count")
        .name("Count");
    match output {
        Some(dir) => counts.sink_to(FileSink::new(dir)).uid("sink"),
        None => counts.sink_to(PrintSink::new()).uid("sink"),
    };
    Ok(env.build())
}

/// The catalog entry of `word-count`.
pub fn word_count_spec() -> JobSpec {
    JobSpec {
        name: "word-count",
        description: "counts words of text files or a socket: word<TAB>count updates",
        params: vec![
            ParamSpec {
                name: "input",
                help: "a text file or a directory of them (this or socket is required)",
            },
            ParamSpec {
                name: "socket",
                help: "HOST:PORT of a text socket, read until it closes (parallelism 1, not replayable)",
            },
            ParamSpec {
                name: "output",
                help: "output directory of part files (default: stdout)",
            },
            fail_after_param(),
        ],
        build: build_from_params,
        states: vec![StateSchema::value::<String, u64>("count", "count")],
    }
}

fn build_from_params(params: &Params) -> Result<JobDefinition, ParamError> {
    let (input, key) = match (params.get::<PathBuf>("input")?, params.raw("socket")) {
        (Some(path), None) => (WordCountInput::Files(path), "input"),
        (None, Some(addr)) => {
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .filter(|(h, _)| !h.is_empty())
                .ok_or_else(|| params.invalid("socket", "expected HOST:PORT"))?;
            (WordCountInput::Socket { host, port }, "socket")
        }
        (Some(_), Some(_)) => {
            return Err(params.invalid("socket", "give either input or socket, not both"))
        }
        (None, None) => {
            return Err(ParamError::Missing {
                job: params.job().to_string(),
                key: "input (or socket)".into(),
            })
        }
    };
    let output: Option<PathBuf> = params.get("output")?;
    if let Some(dir) = &output {
        check_output_dir(params, "output", dir)?;
    }
    let fail = fail_after(params)?;
    word_count(input, output, fail).map_err(|e| params.invalid(key, e.to_string()))
}
