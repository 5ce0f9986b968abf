//! Typed state handles, the way user functions see state.
//!
//! A handle is declared once, in the function's `open`, through a [`StateRegistry`], and used
//! per record through the [`KeyedScope`] the runtime passes in: the scope fixes the current key
//! (and namespace), so a handle only ever reads and writes the current key's state, as in Flink.
//! Values are encoded with postcard; map keys are ordered by their encoded bytes.

use crate::ttl::{self, StateTtl, TtlUpdate};
use crate::{KeyedStateBackend, StateDescriptor, StateError, StateId, StateKey, StateKind};
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;
use std::sync::Arc;
use weir_types::KeyGroup;

/// Declares states on a backend; handed to user functions in `open`.
pub struct StateRegistry<'a> {
    backend: &'a mut dyn KeyedStateBackend,
}

impl<'a> StateRegistry<'a> {
    /// Wraps a backend.
    pub fn new(backend: &'a mut dyn KeyedStateBackend) -> Self {
        Self { backend }
    }

    fn register(&mut self, name: &str, kind: StateKind) -> Result<(StateId, Arc<str>), StateError> {
        let id = self.backend.register(&StateDescriptor {
            name: name.to_string(),
            kind,
        })?;
        Ok((id, Arc::from(name)))
    }

    /// Declares a [`ValueState`] named `name`.
    pub fn value_state<T>(&mut self, name: &str) -> Result<ValueState<T>, StateError> {
        let (id, name) = self.register(name, StateKind::Value)?;
        Ok(ValueState {
            id,
            name,
            ttl: None,
            _t: PhantomData,
        })
    }

    /// Declares a [`ValueState`] named `name` whose values expire `ttl` after their last
    /// update (see [`crate::ttl`]).
    pub fn value_state_with_ttl<T>(
        &mut self,
        name: &str,
        ttl: StateTtl,
    ) -> Result<ValueState<T>, StateError> {
        let (id, name) = self.register(name, StateKind::ValueTtl)?;
        Ok(ValueState {
            id,
            name,
            ttl: Some(ttl),
            _t: PhantomData,
        })
    }

    /// Declares a [`ListState`] named `name`.
    pub fn list_state<T>(&mut self, name: &str) -> Result<ListState<T>, StateError> {
        let (id, name) = self.register(name, StateKind::List)?;
        Ok(ListState {
            id,
            name,
            ttl: None,
            _t: PhantomData,
        })
    }

    /// Declares a [`ListState`] named `name` whose list expires `ttl` after its last update.
    pub fn list_state_with_ttl<T>(
        &mut self,
        name: &str,
        ttl: StateTtl,
    ) -> Result<ListState<T>, StateError> {
        let (id, name) = self.register(name, StateKind::ListTtl)?;
        Ok(ListState {
            id,
            name,
            ttl: Some(ttl),
            _t: PhantomData,
        })
    }

    /// Declares a [`MapState`] named `name`.
    pub fn map_state<K, V>(&mut self, name: &str) -> Result<MapState<K, V>, StateError> {
        let (id, name) = self.register(name, StateKind::Map)?;
        Ok(MapState {
            id,
            name,
            ttl: None,
            _t: PhantomData,
        })
    }

    /// Declares a [`MapState`] named `name` whose entries each expire `ttl` after their last
    /// update.
    pub fn map_state_with_ttl<K, V>(
        &mut self,
        name: &str,
        ttl: StateTtl,
    ) -> Result<MapState<K, V>, StateError> {
        let (id, name) = self.register(name, StateKind::MapTtl)?;
        Ok(MapState {
            id,
            name,
            ttl: Some(ttl),
            _t: PhantomData,
        })
    }

    /// Declares a [`ReducingState`] named `name` that combines added values with `reduce`.
    pub fn reducing_state<T, F>(
        &mut self,
        name: &str,
        reduce: F,
    ) -> Result<ReducingState<T>, StateError>
    where
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        let (id, name) = self.register(name, StateKind::Reducing)?;
        Ok(ReducingState {
            id,
            name,
            reduce: Arc::new(reduce),
        })
    }
}

/// The current key (and namespace) of a keyed operator, over its backend.
pub struct KeyedScope<'a> {
    backend: &'a mut dyn KeyedStateBackend,
    key_group: KeyGroup,
    key: &'a [u8],
    namespace: &'a [u8],
    scratch: &'a mut Vec<u8>,
}

impl<'a> KeyedScope<'a> {
    /// A scope for the serialised `key` in `key_group`, with no namespace. `scratch` is a
    /// buffer the handles reuse for encoding.
    pub fn new(
        backend: &'a mut dyn KeyedStateBackend,
        key_group: KeyGroup,
        key: &'a [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Self {
        Self {
            backend,
            key_group,
            key,
            namespace: &[],
            scratch,
        }
    }

    /// The same scope with a namespace (windows use the window as namespace).
    pub fn with_namespace(self, namespace: &'a [u8]) -> Self {
        Self { namespace, ..self }
    }

    /// A scope for the same key in `namespace`, borrowing this one (a window's state, inside
    /// a function that also uses the key's state outside any window).
    pub fn namespaced<'b>(&'b mut self, namespace: &'b [u8]) -> KeyedScope<'b> {
        KeyedScope {
            backend: &mut *self.backend,
            key_group: self.key_group,
            key: self.key,
            namespace,
            scratch: &mut *self.scratch,
        }
    }

    /// The backend, key group and key under this scope, for services that keep their own
    /// entries beside the user's states (timers).
    pub fn parts(&mut self) -> (&mut dyn KeyedStateBackend, KeyGroup, &[u8]) {
        (&mut *self.backend, self.key_group, self.key)
    }

    /// The serialised current key.
    pub fn key_bytes(&self) -> &[u8] {
        self.key
    }

    /// The current key's key group.
    pub fn key_group(&self) -> KeyGroup {
        self.key_group
    }

    fn cell(&self) -> StateKey<'a> {
        StateKey {
            key_group: self.key_group,
            key: self.key,
            namespace: self.namespace,
            user_key: &[],
        }
    }
}

fn encode<T: Serialize>(state: &str, value: &T, out: &mut Vec<u8>) -> Result<(), StateError> {
    out.clear();
    let taken = std::mem::take(out);
    *out = postcard::to_extend(value, taken).map_err(|e| StateError::Codec {
        state: state.to_string(),
        op: "encode",
        detail: e.to_string(),
    })?;
    Ok(())
}

fn decode<T: DeserializeOwned>(state: &str, bytes: &[u8]) -> Result<T, StateError> {
    postcard::from_bytes(bytes).map_err(|e| StateError::Codec {
        state: state.to_string(),
        op: "decode",
        detail: e.to_string(),
    })
}

/// A visitor of `(serialised key, value)` pairs; returning an error stops the iteration.
pub type KeyValueVisitor<'a, T> = dyn FnMut(&[u8], T) -> Result<(), StateError> + 'a;

/// One value per key.
pub struct ValueState<T> {
    id: StateId,
    name: Arc<str>,
    ttl: Option<StateTtl>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for ValueState<T> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            name: self.name.clone(),
            ttl: self.ttl,
            _t: PhantomData,
        }
    }
}

/// Reads and decodes the value at `key`, and whether reading it renews its TTL. A value of a
/// TTL state whose time passed is deleted and read as `None`.
fn read<T: DeserializeOwned>(
    backend: &mut dyn KeyedStateBackend,
    id: StateId,
    key: &StateKey<'_>,
    name: &str,
    ttl: Option<&StateTtl>,
) -> Result<Option<(T, bool)>, StateError> {
    let found = match (backend.get(id, key)?, ttl) {
        (None, _) => return Ok(None),
        (Some(bytes), None) => return Ok(Some((decode(name, bytes)?, false))),
        (Some(bytes), Some(ttl)) => live(name, ttl, bytes)?
            .map(|(payload, renew)| Ok::<_, StateError>((decode(name, payload)?, renew)))
            .transpose()?,
    };
    if found.is_none() {
        backend.delete(id, key)?;
    }
    Ok(found)
}

/// Reads a TTL state's stored bytes: `None` when expired (or absent), else the payload and
/// whether the read renews the expiry.
fn live<'b>(
    state: &str,
    ttl: &StateTtl,
    bytes: &'b [u8],
) -> Result<Option<(&'b [u8], bool)>, StateError> {
    let (expires, payload) = ttl::split(bytes).ok_or_else(|| StateError::Codec {
        state: state.to_string(),
        op: "decode",
        detail: format!("a TTL value of {} bytes has no expiry", bytes.len()),
    })?;
    if expires <= ttl::now_ms() {
        return Ok(None);
    }
    Ok(Some((payload, ttl.update == TtlUpdate::OnReadAndWrite)))
}

impl<T: Serialize + DeserializeOwned> ValueState<T> {
    /// The current key's value, if set (and, with a TTL, not expired).
    pub fn get(&self, scope: &mut KeyedScope<'_>) -> Result<Option<T>, StateError> {
        let cell = scope.cell();
        match read(scope.backend, self.id, &cell, &self.name, self.ttl.as_ref())? {
            Some((value, true)) => {
                self.update(scope, &value)?;
                Ok(Some(value))
            }
            found => Ok(found.map(|(value, _)| value)),
        }
    }

    /// Sets the current key's value (with a TTL: expiring `ttl` from now).
    pub fn update(&self, scope: &mut KeyedScope<'_>, value: &T) -> Result<(), StateError> {
        let cell = scope.cell();
        encode(&self.name, value, scope.scratch)?;
        if let Some(ttl) = &self.ttl {
            let mut wrapped = Vec::with_capacity(scope.scratch.len() + ttl::PREFIX);
            ttl::wrap(ttl.expiry_from_now(), scope.scratch, &mut wrapped);
            return scope.backend.put(self.id, &cell, &wrapped);
        }
        scope.backend.put(self.id, &cell, scope.scratch)
    }

    /// Removes the current key's value.
    pub fn clear(&self, scope: &mut KeyedScope<'_>) -> Result<(), StateError> {
        let cell = scope.cell();
        scope.backend.delete(self.id, &cell)
    }

    /// The state's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Visits every key's value, in key-group order: `f(serialised key, value)`. Meant for end of
    /// input and offline reading, not the per-record path.
    pub fn for_each_key(
        &self,
        backend: &mut dyn KeyedStateBackend,
        f: &mut KeyValueVisitor<'_, T>,
    ) -> Result<(), StateError> {
        let name = self.name.clone();
        let ttl = self.ttl;
        backend.scan(self.id, &mut |entry| match &ttl {
            None => f(entry.key.key, decode(&name, entry.value)?),
            Some(ttl) => match live(&name, ttl, entry.value)? {
                Some((payload, _)) => f(entry.key.key, decode(&name, payload)?),
                None => Ok(()),
            },
        })
    }
}

/// A list per key, stored as one cell: a sequence of `varint(len) ‖ postcard(element)`, so
/// `add` appends without decoding the elements already there.
pub struct ListState<T> {
    id: StateId,
    name: Arc<str>,
    ttl: Option<StateTtl>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for ListState<T> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            name: self.name.clone(),
            ttl: self.ttl,
            _t: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> ListState<T> {
    /// The elements' bytes of the current key's list (empty when none or expired), and
    /// whether a read renews a TTL.
    fn joined(&self, scope: &mut KeyedScope<'_>) -> Result<(Vec<u8>, bool), StateError> {
        let cell = scope.cell();
        let Some(bytes) = scope.backend.get(self.id, &cell)? else {
            return Ok((Vec::new(), false));
        };
        match &self.ttl {
            None => Ok((bytes.to_vec(), false)),
            Some(ttl) => Ok(live(&self.name, ttl, bytes)?
                .map(|(p, renew)| (p.to_vec(), renew))
                .unwrap_or_default()),
        }
    }

    fn store(&self, scope: &mut KeyedScope<'_>, joined: &[u8]) -> Result<(), StateError> {
        let cell = scope.cell();
        match &self.ttl {
            None => scope.backend.put(self.id, &cell, joined),
            Some(ttl) => {
                let mut wrapped = Vec::with_capacity(joined.len() + ttl::PREFIX);
                ttl::wrap(ttl.expiry_from_now(), joined, &mut wrapped);
                scope.backend.put(self.id, &cell, &wrapped)
            }
        }
    }

    /// Appends `value` to the current key's list.
    pub fn add(&self, scope: &mut KeyedScope<'_>, value: &T) -> Result<(), StateError> {
        let mut element = Vec::new();
        encode(&self.name, value, &mut element)?;
        let (mut joined, _) = self.joined(scope)?;
        append_element(&mut joined, &element);
        self.store(scope, &joined)
    }

    /// The current key's list, oldest first (empty when none or expired).
    pub fn get(&self, scope: &mut KeyedScope<'_>) -> Result<Vec<T>, StateError> {
        let (joined, renew) = self.joined(scope)?;
        if joined.is_empty() {
            if self.ttl.is_some() {
                // Expired (or absent): drop what is stored.
                let cell = scope.cell();
                scope.backend.delete(self.id, &cell)?;
            }
            return Ok(Vec::new());
        }
        if renew {
            self.store(scope, &joined)?;
        }
        split_elements(&self.name, &joined)?
            .into_iter()
            .map(|e| decode(&self.name, e))
            .collect()
    }

    /// Replaces the current key's list with `values`.
    pub fn update(&self, scope: &mut KeyedScope<'_>, values: &[T]) -> Result<(), StateError> {
        let cell = scope.cell();
        if values.is_empty() {
            return scope.backend.delete(self.id, &cell);
        }
        let mut joined = Vec::new();
        let mut element = Vec::new();
        for v in values {
            encode(&self.name, v, &mut element)?;
            append_element(&mut joined, &element);
        }
        self.store(scope, &joined)
    }

    /// Empties the current key's list.
    pub fn clear(&self, scope: &mut KeyedScope<'_>) -> Result<(), StateError> {
        let cell = scope.cell();
        scope.backend.delete(self.id, &cell)
    }
}

fn append_element(joined: &mut Vec<u8>, element: &[u8]) {
    let mut n = element.len() as u64;
    while n >= 0x80 {
        joined.push((n as u8) | 0x80);
        n >>= 7;
    }
    joined.push(n as u8);
    joined.extend_from_slice(element);
}

fn split_elements<'b>(state: &str, mut bytes: &'b [u8]) -> Result<Vec<&'b [u8]>, StateError> {
    let bad = || StateError::Codec {
        state: state.to_string(),
        op: "decode",
        detail: "list cell is truncated".into(),
    };
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut len: u64 = 0;
        let mut i = 0;
        loop {
            let b = *bytes.get(i).ok_or_else(bad)?;
            len |= u64::from(b & 0x7f) << (7 * i);
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            if i >= 10 {
                return Err(bad());
            }
        }
        let len = usize::try_from(len).map_err(|_| bad())?;
        let element = bytes.get(i..i + len).ok_or_else(bad)?;
        out.push(element);
        bytes = &bytes[i + len..];
    }
    Ok(out)
}

/// A map per key: one backend entry per map key.
pub struct MapState<K, V> {
    id: StateId,
    name: Arc<str>,
    ttl: Option<StateTtl>,
    _t: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for MapState<K, V> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            name: self.name.clone(),
            ttl: self.ttl,
            _t: PhantomData,
        }
    }
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> MapState<K, V> {
    /// The value at `user_key` in the current key's map.
    pub fn get(&self, scope: &mut KeyedScope<'_>, user_key: &K) -> Result<Option<V>, StateError> {
        let mut uk = Vec::new();
        encode(&self.name, user_key, &mut uk)?;
        let entry = StateKey {
            user_key: &uk,
            ..scope.cell()
        };
        match read(
            scope.backend,
            self.id,
            &entry,
            &self.name,
            self.ttl.as_ref(),
        )? {
            Some((value, true)) => {
                self.insert(scope, user_key, &value)?;
                Ok(Some(value))
            }
            found => Ok(found.map(|(value, _)| value)),
        }
    }

    /// Sets `user_key` to `value` in the current key's map.
    pub fn insert(
        &self,
        scope: &mut KeyedScope<'_>,
        user_key: &K,
        value: &V,
    ) -> Result<(), StateError> {
        let mut uk = Vec::new();
        encode(&self.name, user_key, &mut uk)?;
        encode(&self.name, value, scope.scratch)?;
        let entry = StateKey {
            user_key: &uk,
            ..scope.cell()
        };
        if let Some(ttl) = &self.ttl {
            let mut wrapped = Vec::with_capacity(scope.scratch.len() + ttl::PREFIX);
            ttl::wrap(ttl.expiry_from_now(), scope.scratch, &mut wrapped);
            return scope.backend.put(self.id, &entry, &wrapped);
        }
        scope.backend.put(self.id, &entry, scope.scratch)
    }

    /// Removes `user_key` from the current key's map.
    pub fn remove(&self, scope: &mut KeyedScope<'_>, user_key: &K) -> Result<(), StateError> {
        let mut uk = Vec::new();
        encode(&self.name, user_key, &mut uk)?;
        let entry = StateKey {
            user_key: &uk,
            ..scope.cell()
        };
        scope.backend.delete(self.id, &entry)
    }

    /// Whether the current key's map holds `user_key`.
    pub fn contains(&self, scope: &mut KeyedScope<'_>, user_key: &K) -> Result<bool, StateError> {
        Ok(self.get(scope, user_key)?.is_some())
    }

    /// The current key's map entries, in ascending order of encoded map key.
    pub fn entries(&self, scope: &mut KeyedScope<'_>) -> Result<Vec<(K, V)>, StateError> {
        let cell = scope.cell();
        let name = self.name.clone();
        let ttl = self.ttl;
        let mut out = Vec::new();
        scope
            .backend
            .prefix_for_each(self.id, &cell, &mut |uk, v| {
                let v = match &ttl {
                    None => v,
                    Some(ttl) => match live(&name, ttl, v)? {
                        Some((payload, _)) => payload,
                        None => return Ok(()),
                    },
                };
                out.push((decode(&name, uk)?, decode(&name, v)?));
                Ok(())
            })?;
        Ok(out)
    }

    /// Whether the current key's map is empty.
    pub fn is_empty(&self, scope: &mut KeyedScope<'_>) -> Result<bool, StateError> {
        let cell = scope.cell();
        let mut any = false;
        let now = ttl::now_ms();
        let with_ttl = self.ttl.is_some();
        scope.backend.prefix_for_each(self.id, &cell, &mut |_, v| {
            any |= !with_ttl || !ttl::expired(v, now);
            Ok(())
        })?;
        Ok(!any)
    }

    /// Empties the current key's map.
    pub fn clear(&self, scope: &mut KeyedScope<'_>) -> Result<(), StateError> {
        let cell = scope.cell();
        scope.backend.delete_prefix(self.id, &cell)
    }
}

/// One value per key, combined with a reduce function on every `add`.
pub struct ReducingState<T> {
    id: StateId,
    name: Arc<str>,
    reduce: Arc<dyn Fn(T, T) -> T + Send + Sync>,
}

impl<T> Clone for ReducingState<T> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            name: self.name.clone(),
            reduce: self.reduce.clone(),
        }
    }
}

impl<T: Serialize + DeserializeOwned> ReducingState<T> {
    /// Combines `value` into the current key's value (or stores it, when there is none).
    pub fn add(&self, scope: &mut KeyedScope<'_>, value: T) -> Result<(), StateError> {
        let cell = scope.cell();
        let next = match scope.backend.get(self.id, &cell)? {
            Some(bytes) => (self.reduce)(decode(&self.name, bytes)?, value),
            None => value,
        };
        encode(&self.name, &next, scope.scratch)?;
        scope.backend.put(self.id, &cell, scope.scratch)
    }

    /// The current key's reduced value, if any value was added.
    pub fn get(&self, scope: &mut KeyedScope<'_>) -> Result<Option<T>, StateError> {
        let cell = scope.cell();
        match scope.backend.get(self.id, &cell)? {
            Some(bytes) => Ok(Some(decode(&self.name, bytes)?)),
            None => Ok(None),
        }
    }

    /// Removes the current key's value.
    pub fn clear(&self, scope: &mut KeyedScope<'_>) -> Result<(), StateError> {
        let cell = scope.cell();
        scope.backend.delete(self.id, &cell)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_elements_split_back_as_appended() {
        let mut joined = Vec::new();
        append_element(&mut joined, b"a");
        append_element(&mut joined, &[7u8; 200]);
        append_element(&mut joined, b"");
        let parts = split_elements("s", &joined).unwrap();
        assert_eq!(parts, vec![&b"a"[..], &[7u8; 200][..], &b""[..]]);
    }

    #[test]
    fn a_truncated_list_cell_is_a_codec_error_naming_the_state() {
        let mut joined = Vec::new();
        append_element(&mut joined, b"abc");
        joined.pop();
        let err = split_elements("buffer", &joined).unwrap_err();
        assert!(err.to_string().contains("state 'buffer'"), "{err}");
    }
}
