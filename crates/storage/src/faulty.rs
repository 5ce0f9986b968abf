//! [`FaultyStore`]: an [`ObjectStore`] wrapper that fails or corrupts requests on demand, so
//! tests can show that "a failed upload declines the checkpoint" and "a flipped byte is
//! detected" without a misbehaving server.
//!
//! The faults are armed through a [`Faults`] handle, which stays usable after the store has
//! been wrapped into a [`Store`]:
//!
//! - fail the next N puts / gets / deletes (each failure consumes one; retries see the next);
//! - fail every put whose path matches a predicate (until cleared);
//! - lose the answer of the next N puts: the object is written, then the put reports a failure
//!   (a timeout after the server committed);
//! - flip a byte in what the next N gets (or every get of matching paths) return.
//!
//! Injected failures are `object_store::Error::Generic` errors carrying an [`InjectedFault`],
//! which is how real network failures arrive, so [`Store`] classifies them as transient and
//! retries them. Head requests (existence checks) and listings pass through untouched; a
//! multipart upload counts as a put when it starts.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use crate::control::FaultControl;
use crate::store::Store;

/// A test predicate over object paths.
pub type PathPredicate = Arc<dyn Fn(&Path) -> bool + Send + Sync>;

/// The error a [`FaultyStore`] injects (the source of an `object_store::Error::Generic`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected {op} failure at '{path}'")]
pub struct InjectedFault {
    /// `put`, `put (answer lost)`, `get` or `delete`.
    pub op: &'static str,
    /// The path of the failed request.
    pub path: String,
}

#[derive(Default)]
struct FaultState {
    fail_puts: u32,
    lose_put_answers: u32,
    fail_gets: u32,
    fail_deletes: u32,
    corrupt_gets: u32,
    fail_puts_matching: Option<PathPredicate>,
    corrupt_gets_matching: Option<PathPredicate>,
    /// Puts of matching paths wait this long first (a slow or hung store).
    delay_puts_matching: Option<(PathPredicate, std::time::Duration)>,
    put_attempts: u64,
    get_attempts: u64,
    delete_attempts: u64,
    injected: u64,
}

/// The control panel of a [`FaultyStore`]; clones share it.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<FaultState>>);

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("Faults")
            .field("fail_puts", &s.fail_puts)
            .field("lose_put_answers", &s.lose_put_answers)
            .field("fail_gets", &s.fail_gets)
            .field("fail_deletes", &s.fail_deletes)
            .field("corrupt_gets", &s.corrupt_gets)
            .field("fail_puts_matching", &s.fail_puts_matching.is_some())
            .field("corrupt_gets_matching", &s.corrupt_gets_matching.is_some())
            .field("injected", &s.injected)
            .finish()
    }
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // A panicking test thread must not hide the counters from the others.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fails the next `n` puts (in addition to any already armed).
    pub fn fail_next_puts(&self, n: u32) {
        self.lock().fail_puts += n;
    }

    /// Lets the next `n` puts write their object, then report a failure anyway, as when the
    /// answer of a committed request is lost.
    pub fn lose_next_put_answers(&self, n: u32) {
        self.lock().lose_put_answers += n;
    }

    /// Fails the next `n` gets.
    pub fn fail_next_gets(&self, n: u32) {
        self.lock().fail_gets += n;
    }

    /// Fails the next `n` deletes.
    pub fn fail_next_deletes(&self, n: u32) {
        self.lock().fail_deletes += n;
    }

    /// Fails every put whose path satisfies `pred`, until [`clear`](Self::clear).
    pub fn fail_puts_matching(&self, pred: impl Fn(&Path) -> bool + Send + Sync + 'static) {
        self.lock().fail_puts_matching = Some(Arc::new(pred));
    }

    /// Makes every put whose path satisfies `pred` wait `delay` before it starts, until
    /// [`clear`](Self::clear): a slow or hung store.
    pub fn delay_puts_matching(
        &self,
        pred: impl Fn(&Path) -> bool + Send + Sync + 'static,
        delay: std::time::Duration,
    ) {
        self.lock().delay_puts_matching = Some((Arc::new(pred), delay));
    }

    fn put_delay(&self, location: &Path) -> Option<std::time::Duration> {
        let s = self.lock();
        s.delay_puts_matching
            .as_ref()
            .filter(|(pred, _)| pred(location))
            .map(|(_, d)| *d)
    }

    /// Flips a byte in what each of the next `n` gets returns.
    pub fn corrupt_next_gets(&self, n: u32) {
        self.lock().corrupt_gets += n;
    }

    /// Flips a byte in what every get of a path satisfying `pred` returns, until
    /// [`clear`](Self::clear).
    pub fn corrupt_gets_matching(&self, pred: impl Fn(&Path) -> bool + Send + Sync + 'static) {
        self.lock().corrupt_gets_matching = Some(Arc::new(pred));
    }

    /// Disarms every fault; the counters keep counting.
    pub fn clear(&self) {
        let mut s = self.lock();
        s.fail_puts = 0;
        s.lose_put_answers = 0;
        s.fail_gets = 0;
        s.fail_deletes = 0;
        s.corrupt_gets = 0;
        s.fail_puts_matching = None;
        s.corrupt_gets_matching = None;
        s.delay_puts_matching = None;
    }

    /// Puts seen so far, failed ones included.
    pub fn put_attempts(&self) -> u64 {
        self.lock().put_attempts
    }

    /// Gets seen so far (head requests excluded), failed ones included.
    pub fn get_attempts(&self) -> u64 {
        self.lock().get_attempts
    }

    /// Deletes seen so far, failed ones included.
    pub fn delete_attempts(&self) -> u64 {
        self.lock().delete_attempts
    }

    /// Failures injected so far.
    pub fn injected_failures(&self) -> u64 {
        self.lock().injected
    }

    /// Counts a put and fails it if armed; `Ok(true)` means "write, then lose the answer".
    fn on_put(&self, path: &Path) -> Result<bool, object_store::Error> {
        let mut s = self.lock();
        s.put_attempts += 1;
        let matches = s.fail_puts_matching.as_ref().is_some_and(|p| p(path));
        let fail = matches || take(&mut s.fail_puts);
        inject(&mut s, fail, "put", path)?;
        Ok(take(&mut s.lose_put_answers))
    }

    fn lose_answer(&self, path: &Path) -> object_store::Error {
        injected(&mut self.lock(), "put (answer lost)", path)
    }

    fn on_get(&self, path: &Path) -> Result<bool, object_store::Error> {
        let mut s = self.lock();
        s.get_attempts += 1;
        let fail = take(&mut s.fail_gets);
        inject(&mut s, fail, "get", path)?;
        let matches = s.corrupt_gets_matching.as_ref().is_some_and(|p| p(path));
        Ok(matches || take(&mut s.corrupt_gets))
    }

    fn on_delete(&self, path: &Path) -> Result<(), object_store::Error> {
        let mut s = self.lock();
        s.delete_attempts += 1;
        let fail = take(&mut s.fail_deletes);
        inject(&mut s, fail, "delete", path)
    }
}

/// Consumes one armed fault from `counter`, if any.
fn take(counter: &mut u32) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

fn inject(
    s: &mut FaultState,
    fail: bool,
    op: &'static str,
    path: &Path,
) -> Result<(), object_store::Error> {
    if fail {
        Err(injected(s, op, path))
    } else {
        Ok(())
    }
}

/// Counts and builds one injected failure.
fn injected(s: &mut FaultState, op: &'static str, path: &Path) -> object_store::Error {
    s.injected += 1;
    tracing::debug!(op, %path, "injecting a storage failure");
    object_store::Error::Generic {
        store: "FaultyStore",
        source: Box::new(InjectedFault {
            op,
            path: path.to_string(),
        }),
    }
}

async fn apply_control(
    control: Option<&FaultControl>,
    faults: &Faults,
    op: &'static str,
    path: &Path,
) -> object_store::Result<()> {
    let Some(control) = control else {
        return Ok(());
    };
    let now = control.current();
    if !now.delay.is_zero() {
        tokio::time::sleep(now.delay).await;
    }
    if control.draw_failure(now.error_rate) {
        return Err(injected(&mut faults.lock(), op, path));
    }
    Ok(())
}

/// Flips every bit of the middle byte (an empty object has nothing to flip).
fn corrupt(bytes: Bytes) -> Bytes {
    let mut v = bytes.to_vec();
    let mid = v.len() / 2;
    if let Some(b) = v.get_mut(mid) {
        *b ^= 0xff;
    }
    Bytes::from(v)
}

/// An object store that forwards to another and injects the faults armed in its [`Faults`].
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Faults,
    /// Faults switched on from outside the process ([`crate::control`]), if any.
    control: Option<Arc<FaultControl>>,
}

impl FaultyStore {
    /// Wraps `inner` with no fault armed.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            faults: Faults::default(),
            control: None,
        }
    }

    /// Wraps `inner` with the faults the control file of `control` asks for, besides any armed
    /// through [`faults`](Self::faults).
    pub fn controlled(inner: Arc<dyn ObjectStore>, control: Arc<FaultControl>) -> Self {
        Self {
            control: Some(control),
            ..Self::new(inner)
        }
    }

    /// Applies the control file's faults to one request: its delay, then maybe a failure.
    async fn controlled_fault(&self, op: &'static str, path: &Path) -> object_store::Result<()> {
        apply_control(self.control.as_deref(), &self.faults, op, path).await
    }

    /// The handle that arms this store's faults.
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// Wraps `store`'s object store (same objects, same retry policy) and returns the faulty
    /// [`Store`] with its fault handle.
    pub fn wrap(store: &Store) -> (Store, Faults) {
        let faulty = Self::new(Arc::clone(store.object_store()));
        let faults = faulty.faults();
        let wrapped = Store::from_object_store(Arc::new(faulty), format!("faulty({store})"))
            .with_retry_policy(store.retry_policy().clone());
        (wrapped, faults)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if let Some(delay) = self.faults.put_delay(location) {
            tokio::time::sleep(delay).await;
        }
        self.controlled_fault("put", location).await?;
        let lose_answer = self.faults.on_put(location)?;
        let result = self.inner.put_opts(location, payload, opts).await?;
        if lose_answer {
            return Err(self.faults.lose_answer(location));
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.controlled_fault("put", location).await?;
        // A lost answer applies to single puts only; a multipart upload just counts.
        let _ = self.faults.on_put(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.head {
            return self.inner.get_opts(location, options).await;
        }
        self.controlled_fault("get", location).await?;
        let corrupt_it = self.faults.on_get(location)?;
        let result = self.inner.get_opts(location, options).await?;
        if !corrupt_it {
            return Ok(result);
        }
        let meta = result.meta.clone();
        let range = result.range.clone();
        let attributes = result.attributes.clone();
        let extensions = result.extensions.clone();
        let bytes = corrupt(result.bytes().await?);
        tracing::debug!(%location, "injecting a flipped byte");
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async { Ok(bytes) }).boxed()),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let inner = Arc::clone(&self.inner);
        let faults = self.faults.clone();
        let control = self.control.clone();
        locations
            .then(move |location| {
                let inner = Arc::clone(&inner);
                let faults = faults.clone();
                let control = control.clone();
                async move {
                    let location = location?;
                    apply_control(control.as_deref(), &faults, "delete", &location).await?;
                    faults.on_delete(&location)?;
                    inner.delete(&location).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
