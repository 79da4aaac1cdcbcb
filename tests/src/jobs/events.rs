//! The events of the event tests: each test has exchanges of its own.

use eda_worker::prelude::*;

/// To every queue bound to a fanout exchange; its wire name is its own, as
/// it has no routing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(
    exchange = "eda-test.events.fanout",
    kind = "fanout",
    name = "note.posted"
)]
pub struct NotePosted {
    /// The note.
    pub text: String,
}

/// To the queues bound with exactly `invoice.paid`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(
    exchange = "eda-test.events.direct",
    kind = "direct",
    routing_key = "invoice.paid"
)]
pub struct InvoicePaid {
    /// The invoice.
    pub invoice: i64,
}

/// To the queues whose topic pattern matches `order.placed.eu`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(exchange = "eda-test.events.topic", routing_key = "order.placed.eu")]
pub struct OrderPlacedEu {
    /// The order.
    pub order: i64,
}

/// Published where no queue is bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(exchange = "eda-test.events.unrouted", routing_key = "nobody.listens")]
pub struct NobodyListens {
    /// A sequence number.
    pub n: u32,
}

/// A topic event whose exchange the test declares as a fanout one first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(exchange = "eda-test.events.kind", routing_key = "kind.clash")]
pub struct KindClash {
    /// A sequence number.
    pub n: u32,
}

/// An event whose message the test reads off its queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(
    exchange = "eda-test.events.lean",
    routing_key = "lean.event",
    name = "lean:v1"
)]
pub struct LeanEvent {
    /// A sequence number.
    pub n: u32,
}

/// Shipped orders, to three subscribers on queues of their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(exchange = "eda-test.subscribe", routing_key = "order.shipped")]
pub struct OrderShipped {
    /// The order.
    pub order: i64,
}

/// Cancelled orders, to a subscriber that shares its queue with
/// [`ship_from_stock`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(exchange = "eda-test.subscribe", routing_key = "order.cancelled")]
pub struct OrderCancelled {
    /// The order.
    pub order: i64,
}

/// On the same exchange, a key no `order.#` pattern matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(exchange = "eda-test.subscribe", routing_key = "payment.done")]
pub struct PaymentDone {
    /// The order.
    pub order: i64,
}

/// Records each shipped order: the first subscriber.
#[job(queue = "eda-test.subscribe.inventory", on = OrderShipped)]
pub async fn ship_from_stock(ctx: JobContext, event: OrderShipped) -> Result<(), JobError> {
    crate::jobs::record_run(&ctx, &event).await
}

/// Records each cancelled order, on the queue of [`ship_from_stock`].
#[job(queue = "eda-test.subscribe.inventory", on = OrderCancelled)]
pub async fn restock(ctx: JobContext, event: OrderCancelled) -> Result<(), JobError> {
    crate::jobs::record_run(&ctx, &event).await
}

/// Fails its first attempt at each shipped order, then succeeds: its retry
/// must reach its own queue only.
#[job(
    queue = "eda-test.subscribe.billing",
    on = OrderShipped,
    retries = 2,
    backoff = "100ms..100ms"
)]
pub async fn bill_shipment(ctx: JobContext, event: OrderShipped) -> Result<(), JobError> {
    crate::jobs::record(&ctx, &event);
    if ctx.attempt() == 0 {
        return Err(JobError::retryable("the first attempt fails on purpose"));
    }
    Ok(())
}

/// Records each shipped order: the third subscriber.
#[job(queue = "eda-test.subscribe.email", on = OrderShipped)]
pub async fn mail_shipment(ctx: JobContext, event: OrderShipped) -> Result<(), JobError> {
    crate::jobs::record_run(&ctx, &event).await
}

/// Takes every `order.*` event as JSON, recording the routing key and the
/// type it arrived with.
#[job(
    queue = "eda-test.subscribe.audit",
    bind = "eda-test.subscribe:order.#"
)]
pub async fn audit_orders(ctx: JobContext, event: serde_json::Value) -> Result<(), JobError> {
    let seen = serde_json::json!({
        "routing_key": ctx.routing_key(),
        "type": ctx.message_type(),
        "event": event,
    });
    crate::jobs::record_run(&ctx, &seen).await
}

/// An event published after `worker topology declare` and before any
/// worker runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(exchange = "eda-test.topology", routing_key = "order.archived")]
pub struct OrderArchived {
    /// The order.
    pub order: i64,
}

/// Records each archived order.
#[job(queue = "eda-test.topology.archive", on = OrderArchived)]
pub async fn archive_order(ctx: JobContext, event: OrderArchived) -> Result<(), JobError> {
    crate::jobs::record_run(&ctx, &event).await
}

/// Published through the outbox, and by a handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(exchange = "eda-test.events.outbox", routing_key = "invoice.sent")]
pub struct InvoiceSent {
    /// The invoice.
    pub invoice: i64,
}

/// Published by a handler without a database: a follow-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(exchange = "eda-test.events.follow-up", routing_key = "invoice.filed")]
pub struct InvoiceFiled {
    /// The invoice.
    pub invoice: i64,
}

/// Published by a handler with a database: through the outbox in its transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(exchange = "eda-test.events.in-tx", routing_key = "receipt.sent")]
pub struct ReceiptSent {
    /// The receipt.
    pub receipt: i64,
}

/// A job that announces its work as an event, with its outcome.
#[job(queue = "eda-test.events.filer")]
pub async fn file_invoice(ctx: JobContext, invoice: i64) -> Result<(), JobError> {
    ctx.publish(InvoiceFiled { invoice }).await?;
    crate::jobs::record_run(&ctx, &invoice).await
}

/// Subscribes to [`InvoiceFiled`], recording what arrived.
#[job(queue = "eda-test.events.filed", on = InvoiceFiled)]
pub async fn invoice_filed(ctx: JobContext, event: InvoiceFiled) -> Result<(), JobError> {
    crate::jobs::record_run(&ctx, &event).await
}

/// The same with a database.
#[job(queue = "eda-test.events.receipter")]
pub async fn send_receipt(ctx: JobContext, receipt: i64) -> Result<(), JobError> {
    ctx.publish(ReceiptSent { receipt }).await?;
    crate::jobs::record_run(&ctx, &receipt).await
}

/// Subscribes to [`ReceiptSent`], recording what arrived.
#[job(queue = "eda-test.events.receipts", on = ReceiptSent)]
pub async fn receipt_sent(ctx: JobContext, event: ReceiptSent) -> Result<(), JobError> {
    crate::jobs::record_run(&ctx, &event).await
}

/// The event of the correlation test, whose subscriber fails for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(
    exchange = "eda-test.events.correlation",
    routing_key = "refund.requested"
)]
pub struct RefundRequested {
    /// The order.
    pub order: i64,
}

/// Publishes [`RefundRequested`] for its order.
#[job(queue = "eda-test.events.refunds")]
pub async fn request_refund(ctx: JobContext, order: i64) -> Result<(), JobError> {
    ctx.publish(RefundRequested { order }).await?;
    crate::jobs::record_run(&ctx, &order).await
}

/// Refuses every refund: its events end in its dead-letter queue.
#[job(queue = "eda-test.events.refusals", on = RefundRequested)]
pub async fn refuse_refund(ctx: JobContext, event: RefundRequested) -> Result<(), JobError> {
    crate::jobs::record(&ctx, &event);
    Err(JobError::permanent("refunds are closed"))
}
