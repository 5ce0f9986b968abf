//! Channel ends whose other side is in another process: elements are encoded once per batch
//! (postcard of the batch's records) so a network pump can carry them as opaque frames.
//!
//! The runtime knows nothing about the network: a TaskManager's data-exchange pump calls
//! [`NextEncoded`] (on a blocking thread) to drain a task's outbound channel, and
//! [`PushEncoded`] to feed a task's inbound channel. Both block exactly as the in-memory
//! channel would, so backpressure is unchanged; dropping either closes the task's side
//! (the task then fails as "downstream lost" or "upstream lost").

use crossbeam_channel::{Receiver, Sender};
use weir_types::{StreamElement, Watermark};

pub use weir_types::EncodedElement;

/// Takes the next element a task wrote into an outbound channel, encoded; `None` once the task
/// dropped its sender (finished or failed) or an element could not be encoded (logged).
pub type NextEncoded = Box<dyn FnMut() -> Option<EncodedElement> + Send>;

/// Hands one element to a task's inbound channel, blocking while it is full; an error when the
/// task is gone or the element does not decode.
pub type PushEncoded = Box<dyn FnMut(EncodedElement) -> Result<(), String> + Send>;

pub(crate) fn encoder<T: crate::Data>(rx: Receiver<StreamElement<T>>) -> NextEncoded {
    Box::new(move || {
        let element = rx.recv().ok()?;
        Some(match element {
            StreamElement::Batch(records) => match postcard::to_allocvec(&records) {
                Ok(bytes) => EncodedElement::Batch(bytes),
                Err(e) => {
                    tracing::error!(error = %e, "a batch cannot be encoded; closing the channel");
                    return None;
                }
            },
            StreamElement::Watermark(w) => EncodedElement::Watermark(w.0),
            StreamElement::Status(s) => EncodedElement::Status(s),
            StreamElement::Barrier(b) => EncodedElement::Barrier(b),
            StreamElement::EndOfInput => EncodedElement::EndOfInput,
        })
    })
}

pub(crate) fn decoder<T: crate::Data>(tx: Sender<StreamElement<T>>, label: String) -> PushEncoded {
    Box::new(move |element| {
        let element = match element {
            EncodedElement::Batch(bytes) => {
                StreamElement::Batch(postcard::from_bytes::<Vec<T>>(&bytes).map_err(|e| {
                    format!(
                        "{label}: a batch of {} bytes does not decode: {e}",
                        bytes.len()
                    )
                })?)
            }
            EncodedElement::Watermark(w) => StreamElement::Watermark(Watermark(w)),
            EncodedElement::Status(s) => StreamElement::Status(s),
            EncodedElement::Barrier(b) => StreamElement::Barrier(b),
            EncodedElement::EndOfInput => StreamElement::EndOfInput,
        };
        tx.send(element)
            .map_err(|_| format!("{label}: the receiving task is gone"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_types::{Barrier, CheckpointId};

    #[test]
    fn elements_survive_encoding_in_order() {
        let (tx, rx) = crossbeam_channel::bounded::<StreamElement<(String, u64)>>(8);
        let mut next = encoder(rx);
        let (tx2, rx2) = crossbeam_channel::bounded::<StreamElement<(String, u64)>>(8);
        let mut push = decoder(tx2, "edge 0".into());
        let barrier = Barrier {
            checkpoint: CheckpointId(3),
            base: None,
            savepoint: None,
        };
        let sent = vec![
            StreamElement::Batch(vec![("a".to_string(), 1), ("b".to_string(), 2)]),
            StreamElement::Watermark(Watermark(9)),
            StreamElement::Status(weir_types::WatermarkStatus::Idle),
            StreamElement::Status(weir_types::WatermarkStatus::Active),
            StreamElement::Barrier(barrier),
            StreamElement::EndOfInput,
        ];
        for e in sent.clone() {
            tx.send(e).unwrap();
        }
        drop(tx);
        while let Some(e) = next() {
            push(e).unwrap();
        }
        let got: Vec<_> = rx2.try_iter().collect();
        assert_eq!(got, sent);
    }

    #[test]
    fn fuzzed_batches_are_refused_or_decoded_never_a_panic_a_hang_or_a_huge_allocation() {
        let (tx, rx) = crossbeam_channel::unbounded::<StreamElement<(String, u64)>>();
        let mut push = decoder(tx, "edge 0".into());
        let seeds: Vec<Vec<u8>> = [
            vec![("a".to_string(), 1u64), ("bcd".to_string(), u64::MAX)],
            vec![],
            (0..50).map(|i| (i.to_string(), i)).collect(),
        ]
        .iter()
        .map(|batch| postcard::to_allocvec(batch).unwrap())
        .collect();
        weir_fuzz::run("data-plane batch (postcard)", &seeds, |bytes| {
            let _ = push(EncodedElement::Batch(bytes.to_vec()));
            while rx.try_recv().is_ok() {}
        });
    }

    #[test]
    fn a_batch_that_does_not_decode_is_an_error_naming_the_channel() {
        let (tx, _rx) = crossbeam_channel::bounded::<StreamElement<u64>>(1);
        let mut push = decoder(tx, "edge 2 (1 -> 0)".into());
        let err = push(EncodedElement::Batch(vec![0xff, 0xff, 0xff])).unwrap_err();
        assert!(err.contains("edge 2 (1 -> 0)"), "{err}");
    }
}
