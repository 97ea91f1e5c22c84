//! The message a test failed with, said again after the components' logs:
//! a CI report keeps the end of the output, and the logs that explain a
//! failure would otherwise push out what the failure was.

use std::cell::RefCell;
use std::sync::Once;

thread_local! {
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps each thread's last panic message, then panics as before.
pub fn remember_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            LAST.with(|last| *last.borrow_mut() = Some(info.to_string()));
            before(info);
        }));
    });
}

/// What this thread last panicked with, if it did.
pub fn last_panic() -> Option<String> {
    LAST.with(|last| last.borrow().clone())
}
