//! A user crate's own `weir` binary: register a job next to the examples and reuse the CLI.
//!
//! ```text
//! cargo run --example custom_job -- local even-squares --param records=1000
//! cargo run --example custom_job -- plan even-squares -p 2
//! ```

use std::process::ExitCode;
use weir::cli::{JobSpec, ParamError, ParamSpec, Params};
use weir::connectors::{GeneratedRecord, GeneratorSource, PrintSink};
use weir::{JobDefinition, StreamEnvironment};

fn even_squares(params: &Params) -> Result<JobDefinition, ParamError> {
    let records: u64 = params.get_or("records", 100)?;
    let env = StreamEnvironment::new("even-squares");
    env.add_source(GeneratorSource::new(7, 1000).records(records))
        .uid("numbers")
        .filter(|r: &GeneratedRecord| r.value.is_multiple_of(2))
        .uid("evens")
        .map(|r: GeneratedRecord| format!("{}^2 = {}", r.value, r.value * r.value))
        .uid("square")
        .sink_to(PrintSink::new())
        .uid("print");
    Ok(env.build())
}

fn main() -> ExitCode {
    let catalog = weir::jobs::catalog().register(JobSpec {
        name: "even-squares",
        description: "squares of the even generated values, printed",
        params: vec![ParamSpec {
            name: "records",
            help: "records to generate (default 100)",
        }],
        build: even_squares,
        // A stateless job: nothing for `weir savepoint dump` to decode.
        states: Vec::new(),
    });
    weir::cli::main(catalog)
}
