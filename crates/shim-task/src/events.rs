//! Task events to containerd, published in order from one thread so that a
//! slow containerd never blocks a Task API call and TaskExit never overtakes
//! TaskStart.
//!
//! The connection to containerd's ttrpc socket breaks when containerd
//! restarts; the publisher then connects again (to `TTRPC_ADDRESS`, as
//! runc's shim does) and retries an event until it is [`EVENT_PATIENCE`]
//! old, so the events of a pod's shim (TaskOOM above all, which nothing else
//! reports) reach the restarted containerd.

use std::sync::mpsc::{channel, Sender};
use std::time::{Duration, Instant};

use containerd_shim::event::Event;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

/// How long an event is retried while containerd is away (restarting).
const EVENT_PATIENCE: Duration = Duration::from_secs(30);

/// The environment variable containerd sets to its ttrpc address for shims.
const TTRPC_ADDRESS: &str = "TTRPC_ADDRESS";

/// Where the task service's events go: containerd ([`Publisher`]), or a
/// recorder in unit tests.
pub trait EventSink: Send + Sync + 'static {
    fn publish(&self, event: Box<dyn Event + Send>);
}

#[derive(Clone)]
pub struct Publisher {
    queue: Sender<(Instant, Box<dyn Event + Send>)>,
}

impl Publisher {
    pub fn start(remote: RemotePublisher, namespace: String) -> Self {
        let (queue, events) = channel::<(Instant, Box<dyn Event + Send>)>();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                let mut remote = Some(remote);
                for (queued, event) in events {
                    let topic = event.topic();
                    let mut delay = Duration::from_millis(50);
                    loop {
                        let result = match &remote {
                            Some(r) => {
                                // A copy per try: publish takes the event.
                                let message: &dyn MessageDyn = &*event;
                                message
                                    .write_to_bytes_dyn()
                                    .and_then(|b| message.descriptor_dyn().parse_from_bytes(&b))
                                    .map_err(|e| e.to_string())
                                    .and_then(|copy| {
                                        r.publish(Context::default(), &topic, &namespace, copy)
                                            .map_err(|e| e.to_string())
                                    })
                            }
                            None => Err("not connected to containerd".to_string()),
                        };
                        let Err(e) = result else {
                            break;
                        };
                        if queued.elapsed() >= EVENT_PATIENCE {
                            log::error!("cannot publish {topic}: {e}");
                            break;
                        }
                        // containerd went away (a restart): connect again.
                        log::debug!("cannot publish {topic} ({e}); connecting to containerd again");
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(1));
                        remote = std::env::var(TTRPC_ADDRESS)
                            .ok()
                            .and_then(|address| RemotePublisher::new(address).ok());
                    }
                }
            })
            .expect("spawn the event publisher");
        Self { queue }
    }
}

impl EventSink for Publisher {
    fn publish(&self, event: Box<dyn Event + Send>) {
        let _ = self.queue.send((Instant::now(), event));
    }
}
