use eda_worker::prelude::*;

#[derive(Serialize, Deserialize, Event)]
#[event(exchange = "notes", kind = "fanout")]
pub struct NotePosted {
    pub text: String,
}

fn main() {}
