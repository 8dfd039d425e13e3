//! Runnable examples of skynet; see the `[[example]]` targets.
