//! End-to-end tests of remote channels: a real tonic server on an OS-picked port, the sending
//! pump of [`Connections`], and closures standing in for the tasks' bounded queues.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::Server;
use weir_exchange::{
    ChannelKey, ConnectOptions, Connections, ExchangeError, ExchangeOptions, ExchangeService,
    Frame, InboundRegistration, NextFn, OutboundEnd, PushFn,
};
use weir_proto::v1::data_exchange_service_client::DataExchangeServiceClient;
use weir_proto::v1::{data_frame::Kind, DataFrame};
use weir_types::{Barrier, CheckpointId};

/// The bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

struct TestServer {
    address: String,
    shutdown: oneshot::Sender<()>,
    serving: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start(service: &ExchangeService) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (shutdown, stop) = oneshot::channel::<()>();
        let serving = tokio::spawn(
            Server::builder()
                .add_service(service.server())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop.await;
                }),
        );
        Self {
            address,
            shutdown,
            serving,
        }
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        // Graceful shutdown waits for open streams; a test that left one open must not hang.
        match tokio::time::timeout(WAIT, self.serving).await {
            Ok(served) => served.unwrap().unwrap(),
            Err(_) => panic!("the server did not stop within {WAIT:?}"),
        }
    }
}

fn key(job: &str) -> ChannelKey {
    ChannelKey {
        job_id: job.into(),
        attempt: 1,
        edge: 0,
        upstream: 0,
        downstream: 1,
    }
}

/// The token of these tests' data plane: every server requires it, every client sends it.
fn token() -> weir_security::Token {
    weir_security::Token::new("exchange-tests-token-0123456789", "test").unwrap()
}

/// A bare client of the data plane that presents the token (and nothing else of `Connections`).
async fn raw_client(address: String) -> DataExchangeServiceClient<weir_security::AuthChannel> {
    let channel = tonic::transport::Endpoint::from_shared(address)
        .unwrap()
        .connect()
        .await
        .unwrap();
    DataExchangeServiceClient::with_interceptor(
        channel,
        weir_security::ClientAuth::new(Some(&token())),
    )
}

fn options(credits: u32) -> ExchangeOptions {
    ExchangeOptions {
        credits,
        open_timeout: Duration::from_secs(5),
        auth: Some(token()),
    }
}

fn connections() -> Connections {
    Connections::new(ConnectOptions {
        auth: Some(token()),
        ..ConnectOptions::default()
    })
}

/// Reports on a oneshot when dropped; closures own one to show when they are dropped.
struct DropFlag(Option<oneshot::Sender<()>>);

impl DropFlag {
    fn new() -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Self(Some(tx)), rx)
    }

    fn keep(&self) {}
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

async fn dropped(flag: oneshot::Receiver<()>, what: &str) {
    tokio::time::timeout(WAIT, flag)
        .await
        .unwrap_or_else(|_| panic!("{what} was not dropped within {WAIT:?}"))
        .unwrap();
}

/// A consuming task's input: `push` forwards into an unbounded queue the test reads.
fn consumer() -> (
    PushFn,
    mpsc::UnboundedReceiver<Frame>,
    oneshot::Receiver<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (flag, dropped) = DropFlag::new();
    let push: PushFn = Box::new(move |frame| {
        flag.keep();
        tx.send(frame).map_err(|_| "consumer gone".to_string())
    });
    (push, rx, dropped)
}

/// A producing task's output: a bounded queue the test fills; `next` takes from it.
fn producer(capacity: usize) -> (mpsc::Sender<Frame>, NextFn, oneshot::Receiver<()>) {
    let (tx, mut rx) = mpsc::channel(capacity);
    let (flag, dropped) = DropFlag::new();
    let next: NextFn = Box::new(move || {
        flag.keep();
        rx.blocking_recv()
    });
    (tx, next, dropped)
}

async fn receive(input: &mut mpsc::UnboundedReceiver<Frame>) -> Frame {
    tokio::time::timeout(WAIT, input.recv())
        .await
        .expect("a frame within the wait")
        .expect("the channel is still open")
}

fn batch(i: u32) -> Frame {
    Frame::Batch(i.to_le_bytes().to_vec())
}

fn register(service: &ExchangeService, key: ChannelKey, push: PushFn) -> InboundRegistration {
    service.register_inbound(key, push).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arrive_in_order_with_barriers_and_watermarks_in_band() {
    let service = ExchangeService::new(options(4));
    let server = TestServer::start(&service).await;
    let (push, mut input, push_dropped) = consumer();
    let _registration = register(&service, key("order"), push);
    let (output, next, next_dropped) = producer(2);
    let pump = connections().spawn_outbound(
        &tokio::runtime::Handle::current(),
        &server.address,
        key("order"),
        next,
    );

    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(batch(i));
        if i % 5 == 4 {
            sent.push(Frame::Watermark(i64::from(i) * 1000));
        }
        if i % 7 == 6 {
            sent.push(Frame::Barrier(Barrier {
                checkpoint: CheckpointId(u64::from(i)),
                base: (i > 7).then_some(CheckpointId(6)),
                savepoint: (i == 13).then_some(weir_types::SavepointBarrier {
                    canonical: false,
                    stop: false,
                }),
            }));
        }
    }
    sent.push(Frame::EndOfInput);
    let feeding = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for frame in sent {
                output.send(frame).await.unwrap();
            }
        })
    };

    let mut received = Vec::new();
    while received.last() != Some(&Frame::EndOfInput) {
        received.push(receive(&mut input).await);
    }
    assert_eq!(received, sent);
    feeding.await.unwrap();
    assert_eq!(pump.join(WAIT).await.unwrap(), OutboundEnd::Finished);
    dropped(push_dropped, "push").await;
    dropped(next_dropped, "next").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_stops_the_producer_after_the_credit_is_spent() {
    const CREDITS: usize = 4;
    const FRAMES: u32 = 50;
    let service = ExchangeService::new(options(CREDITS as u32));
    let server = TestServer::start(&service).await;

    // The consuming task is stuck on its first frame until the gate opens.
    let (gate, gate_closed) = std::sync::mpsc::channel::<()>();
    let (tx, mut input) = mpsc::unbounded_channel();
    let mut waited = false;
    let push: PushFn = Box::new(move |frame| {
        if !waited {
            let _ = gate_closed.recv(); // returns once the gate's sender is dropped
            waited = true;
        }
        tx.send(frame).map_err(|_| "consumer gone".to_string())
    });
    let _registration = register(&service, key("slow"), push);

    // The producing task always has another frame; count how many were taken.
    let taken = Arc::new(AtomicUsize::new(0));
    let next: NextFn = {
        let taken = Arc::clone(&taken);
        Box::new(move || {
            let n = taken.fetch_add(1, Ordering::SeqCst) as u32;
            Some(if n < FRAMES {
                batch(n)
            } else {
                Frame::EndOfInput
            })
        })
    };
    let pump = connections().spawn_outbound(
        &tokio::runtime::Handle::current(),
        &server.address,
        key("slow"),
        next,
    );

    let deadline = tokio::time::Instant::now() + WAIT;
    while taken.load(Ordering::SeqCst) < CREDITS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "credit was never spent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give a pump that ignored credit ample time to show it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_flight = taken.load(Ordering::SeqCst);
    assert!(
        in_flight <= CREDITS + 1,
        "{in_flight} frames taken with {CREDITS} credits and a blocked consumer"
    );

    drop(gate);
    for i in 0..FRAMES {
        assert_eq!(receive(&mut input).await, batch(i));
    }
    assert_eq!(receive(&mut input).await, Frame::EndOfInput);
    assert_eq!(pump.join(WAIT).await.unwrap(), OutboundEnd::Finished);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_for_a_channel_registered_later_waits_for_it() {
    let service = ExchangeService::new(options(4));
    let server = TestServer::start(&service).await;
    let (output, next, _) = producer(2);
    let pump = connections().spawn_outbound(
        &tokio::runtime::Handle::current(),
        &server.address,
        key("late"),
        next,
    );
    output.send(batch(1)).await.unwrap();
    output.send(Frame::EndOfInput).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pump.is_finished(),
        "the stream did not wait for its channel"
    );

    let (push, mut input, _) = consumer();
    let _registration = register(&service, key("late"), push);
    assert_eq!(receive(&mut input).await, batch(1));
    assert_eq!(receive(&mut input).await, Frame::EndOfInput);
    assert_eq!(pump.join(WAIT).await.unwrap(), OutboundEnd::Finished);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_channel_is_refused_after_the_open_timeout() {
    let service = ExchangeService::new(ExchangeOptions {
        credits: 4,
        open_timeout: Duration::from_millis(200),
        auth: Some(token()),
    });
    let server = TestServer::start(&service).await;
    let (_output, next, next_dropped) = producer(2);
    let pump = connections().spawn_outbound(
        &tokio::runtime::Handle::current(),
        &server.address,
        key("nobody"),
        next,
    );
    match pump.join(WAIT).await {
        Err(ExchangeError::Refused { code, message, .. }) => {
            assert_eq!(code, tonic::Code::NotFound);
            assert!(message.contains("nobody#1/edge 0/0->1"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    dropped(next_dropped, "next").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_frame_that_is_not_open_is_rejected_and_the_server_keeps_serving() {
    let service = ExchangeService::new(options(4));
    let server = TestServer::start(&service).await;
    let mut client = raw_client(format!("http://{}", server.address)).await;

    let wrong_firsts: [Vec<DataFrame>; 3] = [
        vec![DataFrame {
            kind: Some(Kind::Batch(vec![1])),
        }],
        vec![DataFrame { kind: None }],
        vec![],
    ];
    for frames in wrong_firsts {
        let status = client
            .transfer(tokio_stream::iter(frames))
            .await
            .expect_err("a stream without `open` is refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("open"), "{}", status.message());
    }

    // The same server still carries a proper channel.
    let (push, mut input, _) = consumer();
    let _registration = register(&service, key("after"), push);
    let (output, next, _) = producer(2);
    let pump = connections().spawn_outbound(
        &tokio::runtime::Handle::current(),
        &server.address,
        key("after"),
        next,
    );
    output.send(Frame::Watermark(7)).await.unwrap();
    output.send(Frame::EndOfInput).await.unwrap();
    assert_eq!(receive(&mut input).await, Frame::Watermark(7));
    assert_eq!(receive(&mut input).await, Frame::EndOfInput);
    assert_eq!(pump.join(WAIT).await.unwrap(), OutboundEnd::Finished);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stream_for_a_channel_is_refused() {
    let service = ExchangeService::new(options(4));
    let server = TestServer::start(&service).await;
    let (push, mut input, _) = consumer();
    let _registration = register(&service, key("twice"), push);
    let (output, next, _) = producer(2);
    let first = connections().spawn_outbound(
        &tokio::runtime::Handle::current(),
        &server.address,
        key("twice"),
        next,
    );
    output.send(batch(0)).await.unwrap();
    assert_eq!(receive(&mut input).await, batch(0));

    let (_output2, next2, next2_dropped) = producer(2);
    let second = connections().spawn_outbound(
        &tokio::runtime::Handle::current(),
        &server.address,
        key("twice"),
        next2,
    );
    match second.join(WAIT).await {
        Err(ExchangeError::Refused { code, .. }) => {
            assert_eq!(code, tonic::Code::FailedPrecondition)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    dropped(next2_dropped, "the second stream's next").await;

    // The first stream is unaffected.
    output.send(Frame::EndOfInput).await.unwrap();
    assert_eq!(receive(&mut input).await, Frame::EndOfInput);
    assert_eq!(first.join(WAIT).await.unwrap(), OutboundEnd::Finished);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_without_credit_fails_the_stream_and_drops_the_consumers_input() {
    const CREDITS: u32 = 2;
    let service = ExchangeService::new(options(CREDITS));
    let server = TestServer::start(&service).await;
    // The consuming task never takes a frame, so no credit comes back.
    let (gate, gate_closed) = std::sync::mpsc::channel::<()>();
    let (flag, push_dropped) = DropFlag::new();
    let push: PushFn = Box::new(move |_| {
        flag.keep();
        let _ = gate_closed.recv();
        Ok(())
    });
    let _registration = register(&service, key("greedy"), push);

    let mut client = raw_client(format!("http://{}", server.address)).await;
    let mut frames = vec![DataFrame {
        kind: Some(Kind::Open((&key("greedy")).into())),
    }];
    // The first frame blocks in `push`; two more fill the queue; the fourth has no credit.
    frames.extend((0..CREDITS + 2).map(|i| weir_exchange::to_wire(batch(i))));
    let mut credits = client
        .transfer(tokio_stream::iter(frames).chain(tokio_stream::pending()))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(WAIT, credits.message()).await.unwrap();
    assert_eq!(first.unwrap().unwrap().frames, CREDITS);
    let status = tokio::time::timeout(WAIT, credits.message())
        .await
        .unwrap()
        .expect_err("the stream fails");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    drop(gate);
    dropped(push_dropped, "push").await;
    drop(credits);
    drop(client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_goes_away_drops_the_producers_input() {
    let service = ExchangeService::new(options(4));
    let server = TestServer::start(&service).await;
    let (push, mut input, push_dropped) = consumer();
    let registration = register(&service, key("gone"), push);
    let (output, next, next_dropped) = producer(2);
    let pump = connections().spawn_outbound(
        &tokio::runtime::Handle::current(),
        &server.address,
        key("gone"),
        next,
    );
    output.send(batch(0)).await.unwrap();
    assert_eq!(receive(&mut input).await, batch(0));

    drop(registration);
    dropped(push_dropped, "push").await;
    // The producing task keeps emitting until its send fails: the exchange dropped `next`.
    let producing = tokio::spawn(async move {
        let mut i = 1;
        while output.send(batch(i)).await.is_ok() {
            i += 1;
        }
    });
    tokio::time::timeout(WAIT, producing)
        .await
        .expect("the producer's send failed within the wait")
        .unwrap();
    dropped(next_dropped, "next").await;
    match pump.join(WAIT).await {
        Err(ExchangeError::StreamFailed { code, .. }) => assert_eq!(code, tonic::Code::Cancelled),
        other => panic!("expected a failed stream, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_dies_closes_the_receivers_channel() {
    let service = ExchangeService::new(options(4));
    let server = TestServer::start(&service).await;

    // The pump is aborted (its TaskManager cancels the task).
    let (push, mut input, push_dropped) = consumer();
    let _aborted = register(&service, key("aborted"), push);
    let (output, next, _) = producer(2);
    let pump = connections().spawn_outbound(
        &tokio::runtime::Handle::current(),
        &server.address,
        key("aborted"),
        next,
    );
    output.send(batch(0)).await.unwrap();
    assert_eq!(receive(&mut input).await, batch(0));
    pump.abort();
    dropped(push_dropped, "push").await;
    assert_eq!(
        input.try_recv().ok(),
        None,
        "no end of input after an abort"
    );
    assert_eq!(pump.join(WAIT).await.unwrap(), OutboundEnd::Aborted);

    // The sending process vanishes: its runtime, and with it the TCP connection, is gone.
    let (push, mut input, push_dropped) = consumer();
    let _vanished = register(&service, key("vanished"), push);
    let sender_process = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let address = format!("http://{}", server.address);
    let credits = sender_process.spawn(async move {
        let mut client = raw_client(address).await;
        let frames = [
            DataFrame {
                kind: Some(Kind::Open((&key("vanished")).into())),
            },
            weir_exchange::to_wire(batch(0)),
        ];
        client
            .transfer(tokio_stream::iter(frames).chain(tokio_stream::pending()))
            .await
            .unwrap()
            .into_inner()
    });
    let credits = tokio::time::timeout(WAIT, credits).await.unwrap().unwrap();
    assert_eq!(receive(&mut input).await, batch(0));
    sender_process.shutdown_background();
    dropped(push_dropped, "push").await;
    assert_eq!(
        input.try_recv().ok(),
        None,
        "no end of input from a dead sender"
    );
    drop(credits);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_attempt_ends_its_streams() {
    let service = ExchangeService::new(options(4));
    let server = TestServer::start(&service).await;
    let (push, mut input, push_dropped) = consumer();
    let _registration = register(&service, key("cancel"), push);
    let (output, next, next_dropped) = producer(2);
    let pump = connections().spawn_outbound(
        &tokio::runtime::Handle::current(),
        &server.address,
        key("cancel"),
        next,
    );
    output.send(batch(0)).await.unwrap();
    assert_eq!(receive(&mut input).await, batch(0));

    service.cancel_attempts("cancel", 1);
    dropped(push_dropped, "push").await;
    // The pump may be waiting inside `next`; it drops `next` once the producer emits again,
    // so the producer's sends fail soon.
    let producing = tokio::spawn(async move {
        let mut i = 1;
        while output.send(batch(i)).await.is_ok() {
            i += 1;
        }
    });
    tokio::time::timeout(WAIT, producing)
        .await
        .unwrap()
        .unwrap();
    dropped(next_dropped, "next").await;
    assert!(matches!(
        pump.join(WAIT).await,
        Err(ExchangeError::StreamFailed {
            code: tonic::Code::Cancelled,
            ..
        })
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_fails_with_its_address_after_bounded_retries() {
    // A port that was just free: nothing listens there.
    let address = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let connections = Connections::new(ConnectOptions {
        connect_timeout: Duration::from_millis(200),
        attempts: 3,
        backoff: Duration::from_millis(10),
        auth: Some(token()),
        tls: None,
    });
    let (_output, next, next_dropped) = producer(2);
    let pump = connections.spawn_outbound(
        &tokio::runtime::Handle::current(),
        &address,
        key("unreachable"),
        next,
    );
    match pump.join(WAIT).await {
        Err(error @ ExchangeError::Connect { .. }) => {
            assert!(error.is_retryable());
            assert!(error.to_string().contains(&address), "{error}");
        }
        other => panic!("expected a connect failure, got {other:?}"),
    }
    dropped(next_dropped, "next").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_the_token_or_with_another_is_refused_before_it_names_a_channel() {
    let service = ExchangeService::new(options(4));
    let server = TestServer::start(&service).await;
    let (push, _input, _push_dropped) = consumer();
    let _registration = register(&service, key("guarded"), push);
    let open = || {
        tokio_stream::iter(vec![
            DataFrame {
                kind: Some(Kind::Open((&key("guarded")).into())),
            },
            weir_exchange::to_wire(batch(0)),
        ])
    };
    let mut bare = DataExchangeServiceClient::connect(format!("http://{}", server.address))
        .await
        .unwrap();
    let status = bare.transfer(open()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let other = weir_security::Token::new("another-token-of-another-cluster", "test").unwrap();
    let mut impostor = DataExchangeServiceClient::with_interceptor(
        channel,
        weir_security::ClientAuth::new(Some(&other)),
    );
    let status = impostor.transfer(open()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    server.stop().await;
}
