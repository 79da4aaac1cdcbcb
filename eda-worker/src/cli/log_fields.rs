//! The log's field formatter: tracing-subscriber's own, made to write each
//! span's fields with one allocation.

use std::fmt;

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};

/// Room for a job's span (`job=… message_id=… attempt=…`) and most events.
const BUFFER_CAPACITY: usize = 128;

/// Formats fields as [`DefaultFields`] does, into a buffer first.
///
/// The log keeps the fields of every span as a string made as the span is
/// made, once per job. [`DefaultFields`] writes that string a piece at a
/// time, so it grows by reallocation several times, and with many threads
/// freeing what lapin's thread allocated, a reallocation waits on the
/// allocator's lock: measured, that was the largest single cost of the span
/// per attempt. A buffer sized up front and copied once costs two plain
/// allocations instead.
///
/// On a terminal the fields are written directly: only
/// tracing-subscriber's own writer can carry its colours.
#[derive(Debug, Default)]
pub(super) struct BufferedFields(DefaultFields);

impl<'writer> FormatFields<'writer> for BufferedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        if writer.has_ansi_escapes() {
            return self.0.format_fields(writer, fields);
        }
        let mut buffer = String::with_capacity(BUFFER_CAPACITY);
        self.0.format_fields(Writer::new(&mut buffer), fields)?;
        writer.write_str(&buffer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    /// Logs a line inside a job's span and returns it as written.
    fn logged<N>(fields: N) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .without_time()
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "job",
                job = %"send_email",
                message_id = %"AZLH8jZxdRWqh1bqZB2wUg",
                attempt = 2u32,
                correlation_id = tracing::field::Empty,
            );
            span.record("correlation_id", tracing::field::display("order-7"));
            let _entered = span.enter();
            tracing::info!(to = "ada@example.com", bytes = 300u32, "sent\x1b[31m");
        });
        let bytes = out.0.lock().expect("log buffer").clone();
        String::from_utf8(bytes).expect("utf-8 log")
    }

    #[test]
    fn lines_read_as_the_default_formatter_writes_them() {
        let line = logged(BufferedFields::default());
        assert_eq!(line, logged(DefaultFields::new()));
        assert!(
            line.contains(
                "job{job=send_email message_id=AZLH8jZxdRWqh1bqZB2wUg attempt=2 correlation_id=order-7}"
            ),
            "{line}"
        );
        assert!(
            line.contains("sent\\x1b[31m to=\"ada@example.com\" bytes=300"),
            "{line}"
        );
    }
}
