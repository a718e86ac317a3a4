//! How the kit gets a fresh store for each case.

use std::future::Future;
use std::sync::Arc;

use fielding_core::FieldingStore;

/// Makes a fresh, empty store for one case (async, so it can open a
/// connection, create a schema or start a container).
///
/// Every closure `Fn() -> impl Future<Output = Arc<S>>` is a factory, for
/// any `S: FieldingStore`, including `dyn FieldingStore`:
///
/// ```
/// use std::sync::Arc;
/// use fielding_core::FieldingStore;
/// use fielding_memory::MemoryStore;
/// use fielding_testkit::StoreFactory;
///
/// fn assert_factory(_: &impl StoreFactory) {}
/// assert_factory(&|| async { Arc::new(MemoryStore::new()) });
/// assert_factory(&|| async { Arc::new(MemoryStore::new()) as Arc<dyn FieldingStore> });
/// ```
///
/// The factory is called once per case, and once per generated schedule in
/// the linearizability case. Cases only touch runs in scopes they make up
/// with random ids, so a factory for a slow backend may hand out the same
/// database every time, as long as nothing else writes to it meanwhile.
/// (The expiry cases reach every job, but only remove jobs finished in
/// the year 2000, which no other case makes. A bulk-job claim may take a
/// job another case left processing: the cases finish such a leftover and
/// claim again. The prune case reaches every change record, but only
/// prunes records made before 1980-01-03, which no other case makes; a
/// store that prunes only a prefix of its log needs a fresh store for that
/// case, as other cases' newer records before its own would stop it.)
///
/// A type that holds state (a connection pool) implements it directly:
///
/// ```
/// use std::{future::Future, pin::Pin, sync::Arc};
/// use fielding_memory::MemoryStore;
/// use fielding_testkit::StoreFactory;
///
/// struct Shared(MemoryStore); // stands in for a pool
///
/// impl StoreFactory for Shared {
///     type Store = MemoryStore;
///     type Future = Pin<Box<dyn Future<Output = Arc<MemoryStore>> + Send>>;
///     fn fresh_store(&self) -> Self::Future {
///         let pool = self.0.clone();
///         Box::pin(async move { Arc::new(pool) })
///     }
/// }
/// ```
pub trait StoreFactory {
    /// The store type.
    type Store: FieldingStore + ?Sized + 'static;
    /// What [`fresh_store`](Self::fresh_store) returns.
    type Future: Future<Output = Arc<Self::Store>>;

    /// A fresh, empty store.
    fn fresh_store(&self) -> Self::Future;
}

impl<F, Fut, S> StoreFactory for F
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<S>>,
    S: FieldingStore + ?Sized + 'static,
{
    type Store = S;
    type Future = Fut;

    fn fresh_store(&self) -> Fut {
        self()
    }
}
