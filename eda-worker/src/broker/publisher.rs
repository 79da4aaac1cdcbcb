//! Confirmed publishing: one channel in confirm mode, shared by every caller.
//!
//! Callers publish concurrently and each awaits only its own confirm, so the
//! confirms of many callers are pipelined on the one channel.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use crate::Error;

/// A channel in confirm mode.
#[derive(Clone)]
pub(crate) struct Publisher {
    channel: Channel,
}

impl Publisher {
    /// Opens a channel on `connection` and turns on publisher confirms.
    pub(crate) async fn open(connection: &Connection) -> Result<Self, Error> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|source| Error::Broker {
                operation: "open a publishing channel".into(),
                source,
            })?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|source| Error::Broker {
                operation: "enable publisher confirms".into(),
                source,
            })?;
        Ok(Publisher { channel })
    }

    /// True while the channel can publish.
    pub(crate) fn is_usable(&self) -> bool {
        self.channel.status().connected()
    }

    /// Closes the channel (before its connection, so that lapin does not try to
    /// close it on a closing connection).
    pub(crate) async fn close(&self) {
        if self.is_usable()
            && let Err(error) = self.channel.close(200, "done".into()).await
        {
            tracing::debug!(error = %error, "publishing channel close failed");
        }
    }

    /// Publishes with `mandatory` set and waits for the broker's confirm.
    ///
    /// A nack, a message returned as unroutable, or a closed channel is an
    /// error: success means a queue has the message.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Error> {
        let broker_error = |source| Error::Broker {
            operation: format!("publish of message {message_id} to `{routing_key}`"),
            source,
        };
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await
            .map_err(broker_error)?
            .await
            .map_err(broker_error)?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(Error::Unroutable {
                    message_id: message_id.to_owned(),
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.to_string(),
                })
            }
            Confirmation::Nack(None) => Err(Error::Nacked {
                message_id: message_id.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::NotRequested => Err(Error::Config(
                "publisher confirms are off on the publishing channel; this is a bug in eda-worker"
                    .into(),
            )),
        }
    }
}
