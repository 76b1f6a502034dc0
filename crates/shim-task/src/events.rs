//! Task events to containerd, published in order from one thread so that a
//! slow containerd never blocks a Task API call and TaskExit never overtakes
//! TaskStart.

use std::sync::mpsc::{channel, Sender};

use containerd_shim::event::Event;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

#[derive(Clone)]
pub struct Publisher {
    queue: Sender<Box<dyn Event + Send>>,
}

impl Publisher {
    pub fn start(remote: RemotePublisher, namespace: String) -> Self {
        let (queue, events) = channel::<Box<dyn Event + Send>>();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for event in events {
                    let topic = event.topic();
                    if let Err(e) = remote.publish(Context::default(), &topic, &namespace, event) {
                        log::error!("cannot publish {topic}: {e}");
                    }
                }
            })
            .expect("spawn the event publisher");
        Self { queue }
    }

    pub fn publish(&self, event: impl Event + Send + 'static) {
        let _ = self.queue.send(Box::new(event));
    }
}
