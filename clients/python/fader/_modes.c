/* fader._modes: the recorder of lookups, the impression observer and the loop of
 * fader.impressions.ImpressionModes.process_all / encode_all, in C.
 *
 * Why native: the modes run once per recorded evaluation, on the event loop that serves
 * requests. In Python they cost ~7,800 instructions a lookup (a 5-tuple hash, two observer
 * dict operations, a (flag, hour) count, an Impression namedtuple), more than a batched
 * lookup itself; the issue's goal (impressions on >= 0.9 of off) needs a fraction of that.
 *
 * Same rules as the Python loop it replaces (kept as the oracle in
 * tests/fader/test_modes.py), step for step:
 * - "definition not found" makes nothing;
 * - mode none, or a flag with impressionsDisabled: counted per (flag, hour) and its key
 *   given to `add_key(flag, key, time_ms)`;
 * - otherwise the observer (keyed by Python's hash of (key, flag, treatment, label, change
 *   number), valued by the latest time seen) gives the previous time; an out-of-order older
 *   time is reported as the impression's own; optimized counts every repeat and drops those
 *   seen in the same hour;
 * - each impression left is an `Impression` namedtuple appended to `made` (process_all), or
 *   written as the wire bytes encode_impressions writes for that namedtuple (encode_all).
 *
 * The Python class (ImpressionModes) owns the state and passes it in: the Observer object,
 * the `counts` dict and the `made` list, which this module mutates and keeps nothing of.
 * Wrong types anywhere in the requests raise TypeError (never a crash): every object read
 * from the requests is type-checked before its fields are read, and every object this code
 * keeps using across a call into Python holds a reference.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define HOUR_MS 3600000LL

/* CPython's tuple hash (xxHash-based, Objects/tupleobject.c since 3.8). The observer's keys
 * must be exactly `hash((key, flag, treatment, label, change))`, as the Python loop made them,
 * so a process keeps one observer whichever side fills it; computing it here avoids building
 * the tuple. tests/fader/test_modes.py checks the digests against hash() itself. */
#if SIZEOF_SIZE_T > 4
#define XXPRIME_1 ((Py_uhash_t)11400714785074694791ULL)
#define XXPRIME_2 ((Py_uhash_t)14029467366897019727ULL)
#define XXPRIME_5 ((Py_uhash_t)2870177450012600261ULL)
#define XXROTATE(x) ((x << 31) | (x >> 33))
#else
#define XXPRIME_1 ((Py_uhash_t)2654435761UL)
#define XXPRIME_2 ((Py_uhash_t)2246822519UL)
#define XXPRIME_5 ((Py_uhash_t)374761393UL)
#define XXROTATE(x) ((x << 13) | (x >> 19))
#endif

enum { FIELDS = 5 };

/* PyObject_Hash, without its calls through the type for a str (flags, treatments and labels
 * are the snapshot's own strings, their hashes cached; keys are new, and hashed here as str
 * hashes itself, its data's bytes, which three calls deep cost a third more). */
static inline Py_hash_t
hash_of(PyObject *value)
{
    if (PyUnicode_CheckExact(value)) {
        Py_hash_t cached = ((PyASCIIObject *)value)->hash;
        if (cached != -1) {
            return cached;
        }
        if (PyUnicode_IS_COMPACT(value)) {
            return _Py_HashBytes(PyUnicode_DATA(value),
                                 PyUnicode_GET_LENGTH(value) * PyUnicode_KIND(value));
        }
    }
    return PyObject_Hash(value);
}

/* The hash of a tuple whose items hash to `lanes`. */
static Py_hash_t
tuple_hash(const Py_hash_t lanes[FIELDS])
{
    Py_uhash_t acc = XXPRIME_5;
    for (int i = 0; i < FIELDS; i++) {
        acc += (Py_uhash_t)lanes[i] * XXPRIME_2;
        acc = XXROTATE(acc);
        acc *= XXPRIME_1;
    }
    acc += FIELDS ^ (XXPRIME_5 ^ 3527539UL);
    if (acc == (Py_uhash_t)-1) {
        return 1546275796;
    }
    return (Py_hash_t)acc;
}

/* Counts gathered during one call, merged into the caller's `counts` dict at the end.
 * Why: the dict is keyed by (flag, hour) tuples; counting straight into it costs a tuple, two
 * tuple hashes, two dict probes and an int per lookup, while a call sees few distinct
 * buckets. Entries keep first-seen order, so new keys enter the dict in the order the Python
 * loop would have inserted them. */
typedef struct {
    PyObject *flag; /* strong reference */
    Py_hash_t flag_hash;
    long long hour;
    Py_ssize_t count;
} Bucket;

typedef struct {
    Bucket *buckets;   /* first-seen order */
    Py_ssize_t last;   /* the bucket counted last, + 1 (0: none): lookups repeat it */
    Py_ssize_t used;
    Py_ssize_t *slots; /* open addressing: index + 1 into buckets, 0 = empty */
    Py_ssize_t mask;   /* slots has mask + 1 entries, a power of two */
} Tally;

static Py_uhash_t
bucket_hash(Py_hash_t flag_hash, long long hour)
{
    return (Py_uhash_t)flag_hash * XXPRIME_1 ^ (Py_uhash_t)hour * XXPRIME_2;
}

static int
tally_grow(Tally *tally)
{
    Py_ssize_t size = tally->slots == NULL ? 16 : (tally->mask + 1) * 2;
    Py_ssize_t *slots = PyMem_Calloc((size_t)size, sizeof(Py_ssize_t));
    Bucket *buckets = PyMem_Realloc(tally->buckets, (size_t)(size / 2) * sizeof(Bucket));
    if (slots == NULL || buckets == NULL) {
        PyMem_Free(slots);
        if (buckets != NULL) {
            tally->buckets = buckets;
        }
        PyErr_NoMemory();
        return -1;
    }
    tally->buckets = buckets;
    PyMem_Free(tally->slots);
    tally->slots = slots;
    tally->mask = size - 1;
    for (Py_ssize_t i = 0; i < tally->used; i++) {
        Bucket *b = &buckets[i];
        Py_uhash_t at = bucket_hash(b->flag_hash, b->hour) & (Py_uhash_t)tally->mask;
        while (slots[at] != 0) {
            at = (at + 1) & (Py_uhash_t)tally->mask;
        }
        slots[at] = i + 1;
    }
    return 0;
}

/* Two strs equal? Requests decode their flag names anew, so the same name comes in different
 * objects: compared in place rather than through PyUnicode_Compare's call per lookup. */
static int
same_str(PyObject *a, PyObject *b)
{
    if (a == b) {
        return 1;
    }
    Py_ssize_t length = PyUnicode_GET_LENGTH(a);
    int kind = PyUnicode_KIND(a);
    return length == PyUnicode_GET_LENGTH(b) && kind == PyUnicode_KIND(b) &&
           memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)(length * kind)) == 0;
}

/* The last flag name hashed, and its hash. Requests decode names anew, so equal names come
 * as new objects whose hash is not cached: a batch for one flag repeats the same text lookup
 * after lookup, and comparing it with the last one costs a fraction of hashing it again.
 * (Not done for keys: they mostly differ from one lookup to the next, and a miss measured
 * more than a hit saves.) Only exact strs: a subclass may hash differently. */
typedef struct {
    PyObject *text; /* strong reference, or NULL */
    Py_hash_t hash;
} Remembered;

static Py_hash_t
remembered_hash(Remembered *last, PyObject *text)
{
    if (last->text != NULL && PyUnicode_CheckExact(text) && same_str(last->text, text)) {
        return last->hash;
    }
    Py_hash_t hash = hash_of(text);
    if (hash != -1 && PyUnicode_CheckExact(text)) {
        Py_XSETREF(last->text, Py_NewRef(text));
        last->hash = hash;
    }
    return hash;
}

/* Adds one to (flag, hour). `flag` is a str whose hash is known. */
static int
tally_add(Tally *tally, PyObject *flag, Py_hash_t flag_hash, long long hour)
{
    if (tally->last != 0) {
        Bucket *b = &tally->buckets[tally->last - 1];
        if (b->hour == hour && b->flag_hash == flag_hash && same_str(b->flag, flag)) {
            b->count++;
            return 0;
        }
    }
    /* at most half full: probes stay short, and there is room for the bucket array */
    if (tally->slots == NULL || (tally->used + 1) * 2 > tally->mask + 1) {
        if (tally_grow(tally) < 0) {
            return -1;
        }
    }
    Py_uhash_t at = bucket_hash(flag_hash, hour) & (Py_uhash_t)tally->mask;
    for (;;) {
        Py_ssize_t index = tally->slots[at];
        if (index == 0) {
            break;
        }
        Bucket *b = &tally->buckets[index - 1];
        if (b->hour == hour && b->flag_hash == flag_hash && same_str(b->flag, flag)) {
            b->count++;
            tally->last = index;
            return 0;
        }
        at = (at + 1) & (Py_uhash_t)tally->mask;
    }
    Bucket *b = &tally->buckets[tally->used];
    Py_INCREF(flag);
    b->flag = flag;
    b->flag_hash = flag_hash;
    b->hour = hour;
    b->count = 1;
    tally->used++;
    tally->slots[at] = tally->used;
    tally->last = tally->used;
    return 0;
}

/* counts[(flag, hour)] += count for every bucket, in first-seen order; then frees the
 * tally. Runs on errors too, as the Python loop had counted everything before the bad
 * lookup. Returns -1 (an exception set) if the merge itself failed. */
static int
tally_merge(Tally *tally, PyObject *counts)
{
    int status = 0;
    PyObject *saved_type = NULL, *saved_value = NULL, *saved_tb = NULL;
    PyErr_Fetch(&saved_type, &saved_value, &saved_tb);
    for (Py_ssize_t i = 0; i < tally->used; i++) {
        Bucket *b = &tally->buckets[i];
        if (status == 0) {
            PyObject *hour = PyLong_FromLongLong(b->hour);
            PyObject *key = hour == NULL ? NULL : PyTuple_Pack(2, b->flag, hour);
            Py_XDECREF(hour);
            PyObject *before = key == NULL ? NULL : PyDict_GetItemWithError(counts, key);
            PyObject *value = NULL;
            if (before != NULL) {
                /* before + count as the Python loop added (`counts.get(bucket, 0) + 1`):
                 * a count at or past 2**63 stays exact, where a long long sum overflowed
                 * (undefined in C) or raised. Held: __add__ may be Python code. */
                PyObject *more = PyLong_FromSsize_t(b->count);
                Py_INCREF(before);
                value = more == NULL ? NULL : PyNumber_Add(before, more);
                Py_DECREF(before);
                Py_XDECREF(more);
            }
            else if (!PyErr_Occurred()) {
                value = PyLong_FromSsize_t(b->count);
            }
            if (value == NULL || PyDict_SetItem(counts, key, value) < 0) {
                status = -1;
            }
            Py_XDECREF(value);
            Py_XDECREF(key);
        }
        Py_DECREF(b->flag);
    }
    PyMem_Free(tally->buckets);
    PyMem_Free(tally->slots);
    memset(tally, 0, sizeof(*tally));
    if (status < 0) {
        /* the merge's own error wins; the earlier one (if any) is dropped */
        Py_XDECREF(saved_type);
        Py_XDECREF(saved_value);
        Py_XDECREF(saved_tb);
        return -1;
    }
    PyErr_Restore(saved_type, saved_value, saved_tb);
    return 0;
}

/* The observer: impression hash -> the latest time it was seen, bounded. Two generations
 * rather than an ordered LRU (which costs a move for every repeat): `young` takes every hash
 * seen; once it holds `capacity` hashes it becomes `old` (the previous `old` is dropped) and
 * a new `young` starts. A hash found in `old` is stored in `young` again. So a hash is
 * remembered while fewer than `capacity` other hashes have been seen since it (what Split's
 * LRU of `capacity` guarantees), and forgotten after at most 2 x `capacity`.
 *
 * Why C tables rather than two dicts: a dict costs an int object per lookup, two probes
 * that compare int objects, and ~100 bytes per hash; a table of (hash, time) slots costs
 * one probe and 32-64 bytes per hash. A probe reads one slot, hash and time together: one
 * cache line, where a table outgrown by its keys (a few thousand are enough) cost a miss per
 * array. Open addressing without deletion (a generation is only ever dropped whole), at
 * most half full. Hash 0 marks an empty slot, so a generation holding hash 0 keeps it aside. */
typedef struct {
    int64_t digest; /* 0: an empty slot */
    int64_t time;
} Slot;

typedef struct {
    Slot *slots;
    Py_ssize_t mask;  /* size - 1, a power of two; -1 before the first insertion */
    Py_ssize_t count; /* hashes held, hash 0 included */
    int has_zero;     /* hash 0 is held, with zero_time */
    int64_t zero_time;
} Generation;

static const Generation NO_GENERATION = {NULL, -1, 0, 0, 0};

typedef struct {
    PyObject_HEAD
    Generation young;
    Generation old;
    Py_ssize_t capacity;
} Observer;

static void
generation_free(Generation *g)
{
    PyMem_Free(g->slots);
    *g = NO_GENERATION;
}

/* hashes are well mixed already, but the low bits alone would make long runs for hashes
 * of small ints (hash(5) == 5): Fibonacci hashing spreads them */
static Py_ssize_t
slot_of(const Generation *g, int64_t digest)
{
    return (Py_ssize_t)(((uint64_t)digest * 11400714819323198485ULL) >> 17) & g->mask;
}

/* The slot holding `digest` (not 0), or the empty slot where it would go. */
static Slot *
generation_probe(const Generation *g, int64_t digest)
{
    Py_ssize_t at = slot_of(g, digest);
    while (g->slots[at].digest != 0 && g->slots[at].digest != digest) {
        at = (at + 1) & g->mask;
    }
    return &g->slots[at];
}

static int
generation_find(const Generation *g, int64_t digest, int64_t *time)
{
    if (digest == 0) {
        *time = g->zero_time;
        return g->has_zero;
    }
    if (g->slots == NULL) {
        return 0;
    }
    const Slot *slot = generation_probe(g, digest);
    *time = slot->time;
    return slot->digest != 0;
}

static int
generation_resize(Generation *g, Py_ssize_t size)
{
    Slot *slots = PyMem_Calloc((size_t)size, sizeof(Slot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Generation bigger = {slots, size - 1, g->count, g->has_zero, g->zero_time};
    for (Py_ssize_t i = 0; i <= g->mask; i++) {
        if (g->slots[i].digest != 0) {
            *generation_probe(&bigger, g->slots[i].digest) = g->slots[i];
        }
    }
    PyMem_Free(g->slots);
    *g = bigger;
    return 0;
}

/* The previous time `digest` was seen (returns 1, in *previous) or 0 if not remembered,
 * storing the later of the two. Like Split's Java SDK, an out-of-order older time is
 * returned as the earlier of the two, so no previous time is after the impression.
 * Young is probed once: room for one more is made first, so the slot a miss ends on is where
 * the digest goes (a find then a put probed twice). */
static int
observer_test_and_set(Observer *self, int64_t digest, int64_t time, int64_t *previous)
{
    Generation *young = &self->young;
    int64_t *stored;
    int held;
    if (digest == 0) {
        held = young->has_zero;
        stored = &young->zero_time;
        young->has_zero = 1;
    }
    else {
        if ((young->count + 1) * 2 > young->mask + 1 &&
            generation_resize(young, young->mask < 0 ? 16 : (young->mask + 1) * 2) < 0) {
            return -1;
        }
        Slot *slot = generation_probe(young, digest);
        held = slot->digest != 0;
        stored = &slot->time;
        slot->digest = digest;
    }
    int found = held;
    if (held) {
        *previous = *stored;
        if (time > *previous) {
            *stored = time;
        }
    }
    else {
        found = generation_find(&self->old, digest, previous);
        *stored = found && *previous > time ? *previous : time; /* the later */
        young->count++;
    }
    if (young->count >= self->capacity) {
        generation_free(&self->old);
        self->old = *young;
        *young = NO_GENERATION;
    }
    if (found && *previous > time) {
        *previous = time;
    }
    return found;
}

static int
as_int64(PyObject *value, const char *what, int64_t *out)
{
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what,
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    int overflow;
    long long got = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow) {
        PyErr_Format(PyExc_OverflowError, "%s is out of the 64-bit range", what);
        return -1;
    }
    if (got == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = got;
    return 0;
}

static PyObject *
Observer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"capacity", NULL};
    Py_ssize_t capacity;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n:Observer", names, &capacity)) {
        return NULL;
    }
    Observer *self = (Observer *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->young = self->old = NO_GENERATION;
    self->capacity = capacity < 1 ? 1 : capacity;
    return (PyObject *)self;
}

static void
Observer_dealloc(Observer *self)
{
    PyTypeObject *type = Py_TYPE(self);
    generation_free(&self->young);
    generation_free(&self->old);
    type->tp_free(self);
    Py_DECREF(type); /* a heap type: each instance holds a reference to it */
}

static PyObject *
Observer_test_and_set(Observer *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t digest, time, previous;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "test_and_set takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (as_int64(args[0], "digest", &digest) < 0 || as_int64(args[1], "time_ms", &time) < 0) {
        return NULL;
    }
    int found = observer_test_and_set(self, digest, time, &previous);
    if (found < 0) {
        return NULL;
    }
    if (!found) {
        Py_RETURN_NONE;
    }
    return PyLong_FromLongLong(previous);
}

static int
dict_put(PyObject *dict, int64_t digest, int64_t time)
{
    PyObject *key = PyLong_FromLongLong(digest);
    PyObject *value = PyLong_FromLongLong(time);
    int status = key == NULL || value == NULL ? -1 : PyDict_SetItem(dict, key, value);
    Py_XDECREF(key);
    Py_XDECREF(value);
    return status;
}

static PyObject *
generation_dict(const Generation *g)
{
    PyObject *dict = PyDict_New();
    if (dict != NULL && g->has_zero && dict_put(dict, 0, g->zero_time) < 0) {
        Py_CLEAR(dict);
    }
    for (Py_ssize_t i = 0; dict != NULL && i <= g->mask; i++) {
        if (g->slots[i].digest != 0 && dict_put(dict, g->slots[i].digest, g->slots[i].time) < 0) {
            Py_CLEAR(dict);
        }
    }
    return dict;
}

static PyObject *
Observer_generations(Observer *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *young = generation_dict(&self->young);
    PyObject *old = young == NULL ? NULL : generation_dict(&self->old);
    PyObject *both = old == NULL ? NULL : PyTuple_Pack(2, young, old);
    Py_XDECREF(young);
    Py_XDECREF(old);
    return both;
}

static Py_ssize_t
Observer_len(Observer *self)
{
    Py_ssize_t total = self->young.count;
    int64_t ignored;
    if (self->old.has_zero && !self->young.has_zero) {
        total++;
    }
    for (Py_ssize_t i = 0; i <= self->old.mask; i++) {
        int64_t digest = self->old.slots[i].digest;
        if (digest != 0 && !generation_find(&self->young, digest, &ignored)) {
            total++;
        }
    }
    return total;
}

static PyMethodDef Observer_methods[] = {
    {"test_and_set", (PyCFunction)(void (*)(void))Observer_test_and_set, METH_FASTCALL,
     "test_and_set(digest, time_ms, /)\n--\n\n"
     "The previous time `digest` was seen (None: not remembered), storing the later of the "
     "two; an out-of-order older time is returned as the earlier of the two."},
    {"generations", (PyCFunction)Observer_generations, METH_NOARGS,
     "generations()\n--\n\n"
     "(young, old) as dicts of hash -> time: the observer's state, for inspection."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Observer_members[] = {
    {"capacity", T_PYSSIZET, offsetof(Observer, capacity), READONLY,
     "hashes a generation holds before it becomes the old one"},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Observer_slots[] = {
    {Py_tp_doc, "Observer(capacity)\n--\n\n"
                "Split's impression observer: impression hash -> the last time it was seen, "
                "bounded: remembers at least `capacity` hashes, at most twice that."},
    {Py_tp_new, Observer_new},
    {Py_tp_dealloc, Observer_dealloc},
    {Py_tp_methods, Observer_methods},
    {Py_tp_members, Observer_members},
    {Py_sq_length, Observer_len},
    {0, NULL},
};

static PyType_Spec Observer_spec = {
    .name = "fader._modes.Observer",
    .basicsize = sizeof(Observer),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Observer_slots,
};

static int
type_error(const char *what, PyObject *got)
{
    PyErr_Format(PyExc_TypeError, "%s, not %.100s", what, Py_TYPE(got)->tp_name);
    return -1;
}

/* -- the recorder: the hot path's side of impressions -------------------------------------
 *
 * A request appends its evaluations, as one list, to the recorder and goes on; the pipeline
 * takes them off the request path (`take`) and applies the modes. Requests answered in the
 * same millisecond from the same snapshot share one entry: the fast lane and GetTreatment
 * answer dozens of one-lookup requests a millisecond, and the modes pay a fixed cost per
 * entry (its snapshot, its hour) besides the cost per lookup. What the modes compute only
 * depends on each lookup, its snapshot and its time, in order, so sharing changes nothing
 * they make. A list recorded as given is never changed: an entry grows only in a list the
 * recorder made itself.
 *
 * Why C: the fast lane's requests are one lookup each, and recording one in Python (reading
 * the clock, a list, a call, the sharing test, then taking it back out) cost more than
 * applying the mode to it.
 *
 * Everything runs on the sidecar's event loop, so nothing here needs a lock. When
 * `capacity` lookups are already waiting, a request's lookups are not recorded and are
 * counted in `overflow` (the pipeline reports and logs them); a lookup is never blocked. */

typedef struct {
    PyObject_HEAD
    PyObject *entries; /* list of (snapshot, time ms, lookups), oldest first */
    long long last_time; /* the last entry's time */
    int owned;           /* the last entry's lookups list was made here */
    Py_ssize_t capacity;
    Py_ssize_t size;     /* lookups waiting */
    Py_ssize_t overflow; /* lookups not recorded: there was no room */
} Recorder;

static PyObject *
Recorder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"capacity", NULL};
    Py_ssize_t capacity;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n:Recorder", names, &capacity)) {
        return NULL;
    }
    Recorder *self = (Recorder *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->entries = PyList_New(0);
    if (self->entries == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->capacity = capacity < 0 ? 0 : capacity;
    return (PyObject *)self;
}

static int
Recorder_traverse(Recorder *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self)); /* a heap type */
    Py_VISIT(self->entries);
    return 0;
}

static int
Recorder_clear(Recorder *self)
{
    Py_CLEAR(self->entries);
    return 0;
}

static void
Recorder_dealloc(Recorder *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Recorder_clear(self);
    type->tp_free(self);
    Py_DECREF(type);
}

/* The last entry, if it is of `snap` at `time_ms` (borrowed), else NULL. */
static PyObject *
shared_entry(Recorder *self, PyObject *snap, long long time_ms)
{
    Py_ssize_t count = self->entries == NULL ? 0 : PyList_GET_SIZE(self->entries);
    if (count == 0 || self->last_time != time_ms) {
        return NULL;
    }
    PyObject *last = PyList_GET_ITEM(self->entries, count - 1);
    return PyTuple_GET_ITEM(last, 0) == snap ? last : NULL;
}

/* Appends the entry (snap, time, lookups); `owned`: `lookups` was made here. */
static int
new_entry(Recorder *self, PyObject *snap, PyObject *time, long long time_ms, PyObject *lookups,
          int owned)
{
    PyObject *entry = PyTuple_Pack(3, snap, time, lookups);
    if (entry == NULL) {
        return -1;
    }
    int status = PyList_Append(self->entries, entry);
    Py_DECREF(entry);
    if (status == 0) {
        self->last_time = time_ms;
        self->owned = owned;
    }
    return status;
}

/* Adds `lookups` (a list, `count` long) at (snap, time): to the last entry when it is of the
 * same snapshot and millisecond, else as an entry of its own. `owned`: `lookups` was made
 * here and may become an entry's list. */
static int
add_lookups(Recorder *self, PyObject *snap, PyObject *time, long long time_ms,
            PyObject *lookups, int owned)
{
    Py_ssize_t count = PyList_GET_SIZE(lookups);
    PyObject *last = shared_entry(self, snap, time_ms);
    if (last == NULL) {
        if (new_entry(self, snap, time, time_ms, lookups, owned) < 0) {
            return -1;
        }
    }
    else if (self->owned) {
        PyObject *list = PyTuple_GET_ITEM(last, 2);
        Py_ssize_t end = PyList_GET_SIZE(list);
        if (PyList_SetSlice(list, end, end, lookups) < 0) {
            return -1;
        }
    }
    else { /* the last entry's list is a request's own: both go in a list made here */
        PyObject *joined = PySequence_Concat(PyTuple_GET_ITEM(last, 2), lookups);
        if (joined == NULL) {
            return -1;
        }
        PyObject *entry = PyTuple_Pack(3, snap, PyTuple_GET_ITEM(last, 1), joined);
        Py_DECREF(joined);
        if (entry == NULL) {
            return -1;
        }
        /* the state whole before the old entry is dropped, which frees what only it held
         * (its time, its list) */
        Py_ssize_t at = PyList_GET_SIZE(self->entries) - 1;
        PyObject *old = PyList_GET_ITEM(self->entries, at);
        PyList_SET_ITEM(self->entries, at, entry);
        self->owned = 1;
        self->size += count;
        Py_DECREF(old);
        return 0;
    }
    self->size += count;
    return 0;
}

/* Room for `count` more lookups? If not, they are counted as overflow. */
static int
has_room(Recorder *self, Py_ssize_t count)
{
    if (self->entries == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the recorder was cleared");
        return -1;
    }
    if (count > self->capacity - self->size) {
        self->overflow += count;
        return 0;
    }
    return 1;
}

/* Can hold no reference to anything: nothing reachable from it can lead back to it. */
static int
atomic(PyObject *value)
{
    return value == Py_None || PyUnicode_CheckExact(value) || PyLong_CheckExact(value) ||
           PyBool_Check(value);
}

/* A recorded lookup is kept until the pipeline's next turn, past the garbage collector's
 * next collections, which would walk it each time: CPython untracks a tuple of atomic items
 * itself, but a lookup holds a Decision, a tuple subclass, which it never untracks (these
 * walks were ~3 % of a batched lookup's CPU time with impressions on). A lookup of strs and
 * None and a result of atomic items with no __dict__ can be in no reference cycle: it is
 * untracked here, and freed by its count as before. `*plain`: the last result found plain
 * (lookups share their flag's prebuilt results), or NULL; borrowed, compared only. */
static void
untrack(PyObject *lookup, PyObject **plain)
{
    if (!PyTuple_CheckExact(lookup) || PyTuple_GET_SIZE(lookup) != 4 ||
        !atomic(PyTuple_GET_ITEM(lookup, 0)) || !atomic(PyTuple_GET_ITEM(lookup, 1)) ||
        !atomic(PyTuple_GET_ITEM(lookup, 2))) {
        return;
    }
    PyObject *result = PyTuple_GET_ITEM(lookup, 3);
    if (result != *plain) {
        if (!PyTuple_Check(result) || Py_TYPE(result)->tp_dictoffset != 0) {
            return;
        }
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(result); i++) {
            if (!atomic(PyTuple_GET_ITEM(result, i))) {
                return;
            }
        }
        *plain = result;
    }
    PyObject_GC_UnTrack(lookup); /* nothing if untracked already */
}

static PyObject *
Recorder_record(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "record takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *snap = args[0], *time = args[1], *lookups = args[2];
    /* exactly a list: a subclass's __add__ or __iter__ would run Python code (which could
     * take the entry add_lookups holds borrowed) inside PySequence_Concat and
     * PyList_SetSlice */
    if (!PyList_CheckExact(lookups)) {
        type_error("lookups must be a list", lookups);
        return NULL;
    }
    if (!PyLong_Check(time)) {
        type_error("a time must be an int (ms)", time);
        return NULL;
    }
    long long time_ms = PyLong_AsLongLong(time);
    if (time_ms == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(lookups);
    int room = count == 0 ? 0 : has_room(self, count); /* nothing to record: no entry */
    if (room < 0 || (room > 0 && add_lookups(self, snap, time, time_ms, lookups, 0) < 0)) {
        return NULL;
    }
    if (room > 0) {
        PyObject *plain = NULL; /* the lookups are held by the list: their results live on */
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(lookups); i++) {
            untrack(PyList_GET_ITEM(lookups, i), &plain);
        }
    }
    Py_RETURN_NONE;
}

/* Now, in ms since the epoch: time.time_ns() // 1_000_000, the same clock. */
static int
now_ms(long long *out)
{
    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    *out = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    return 0;
}

static PyObject *
Recorder_record_one(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "record_one takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    int room = has_room(self, 1);
    if (room <= 0) {
        return room < 0 ? NULL : Py_NewRef(Py_None);
    }
    long long time_ms;
    if (now_ms(&time_ms) < 0) {
        return NULL;
    }
    PyObject *lookup = PyTuple_Pack(4, args[1], args[2], args[3], args[4]);
    if (lookup == NULL) {
        return NULL;
    }
    PyObject *plain = NULL;
    untrack(lookup, &plain);
    int status;
    PyObject *last = shared_entry(self, args[0], time_ms);
    if (last != NULL && self->owned) { /* the commonest case at full rate: one append */
        status = PyList_Append(PyTuple_GET_ITEM(last, 2), lookup);
        if (status == 0) {
            self->size++;
        }
    }
    else {
        PyObject *lookups = PyList_New(1);
        PyObject *time = lookups == NULL ? NULL : PyLong_FromLongLong(time_ms);
        if (time == NULL) {
            Py_XDECREF(lookups);
            Py_DECREF(lookup);
            return NULL;
        }
        PyList_SET_ITEM(lookups, 0, Py_NewRef(lookup));
        status = add_lookups(self, args[0], time, time_ms, lookups, 1);
        Py_DECREF(time);
        Py_DECREF(lookups);
    }
    Py_DECREF(lookup);
    return status < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
Recorder_take(Recorder *self, PyObject *limit_arg)
{
    if (self->entries == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the recorder was cleared");
        return NULL;
    }
    Py_ssize_t limit = PY_SSIZE_T_MAX;
    if (limit_arg != Py_None) {
        if (!PyLong_Check(limit_arg)) {
            type_error("limit must be an int or None", limit_arg);
            return NULL;
        }
        limit = PyLong_AsSsize_t(limit_arg);
        if (limit == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    Py_ssize_t taken = 0, done = 0, count = PyList_GET_SIZE(self->entries);
    while (taken < count && done < limit) {
        PyObject *entry = PyList_GET_ITEM(self->entries, taken);
        done += PyList_GET_SIZE(PyTuple_GET_ITEM(entry, 2));
        taken++;
    }
    PyObject *result = PyList_GetSlice(self->entries, 0, taken);
    if (result == NULL || PyList_SetSlice(self->entries, 0, taken, NULL) < 0) {
        Py_XDECREF(result);
        return NULL;
    }
    /* a recorded list its caller changed afterwards must not leave `size` off for good (the
     * pipeline drains while it is not 0) */
    self->size = PyList_GET_SIZE(self->entries) == 0 || done > self->size ? 0 : self->size - done;
    return result;
}

static PyMethodDef Recorder_methods[] = {
    {"record", (PyCFunction)(void (*)(void))Recorder_record, METH_FASTCALL,
     "record(snapshot, time_ms, lookups, /)\n--\n\n"
     "Records a request's lookups (a list of (key, bucketing key, flag, result), never changed "
     "afterwards) as evaluated on `snapshot` at `time_ms`."},
    {"record_one", (PyCFunction)(void (*)(void))Recorder_record_one, METH_FASTCALL,
     "record_one(snapshot, key, bucketing_key, flag, result, /)\n--\n\n"
     "Records one lookup, evaluated on `snapshot` now."},
    {"take", (PyCFunction)Recorder_take, METH_O,
     "take(limit, /)\n--\n\n"
     "The oldest entries, (snapshot, time ms, lookups), until they hold at least `limit` "
     "lookups (None: all), no longer waiting."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Recorder_members[] = {
    {"capacity", T_PYSSIZET, offsetof(Recorder, capacity), READONLY,
     "lookups that may wait; past that, a request's lookups are counted in overflow"},
    {"size", T_PYSSIZET, offsetof(Recorder, size), READONLY, "lookups waiting"},
    {"overflow", T_PYSSIZET, offsetof(Recorder, overflow), READONLY,
     "lookups not recorded because capacity were waiting"},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Recorder_slots[] = {
    {Py_tp_doc, "Recorder(capacity)\n--\n\n"
                "The hot path's side of impressions: requests' lookups, waiting for the "
                "modes, at most `capacity` of them."},
    {Py_tp_new, Recorder_new},
    {Py_tp_dealloc, Recorder_dealloc},
    {Py_tp_traverse, Recorder_traverse},
    {Py_tp_clear, Recorder_clear},
    {Py_tp_methods, Recorder_methods},
    {Py_tp_members, Recorder_members},
    {0, NULL},
};

static PyType_Spec Recorder_spec = {
    .name = "fader._modes.Recorder",
    .basicsize = sizeof(Recorder),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Recorder_slots,
};

/* -- encoding: impressions as protobuf wire bytes ----------------------------------------
 *
 * Why: debug mode uploads every impression, and filling one fader.v1.Impression message per
 * impression through the protobuf runtime (nine attribute sets) then serializing it cost
 * more than the lookup. This writes the bytes `add_messages` + SerializeToString wrote, the
 * same fields under the same rules (proto3: a field at its default is not written; the
 * optional ones only when truthy), in field-number order as the runtime writes them; and
 * refuses what the runtime refused, with the kinds of errors it raised (TypeError for a wrong
 * type, ValueError for an int out of its field's range or a str that is not valid Unicode),
 * so an upload's unencodable records are still found and set aside one by one. */

/* The bytes written so far, in the bytes object that is returned: written in place and
 * shrunk to its length at the end, rather than copied out of a scratch buffer (debug mode
 * writes ~100 bytes a lookup, and each copy of them counts). */
typedef struct {
    PyObject *bytes; /* NULL until the first reserve */
    char *data;
    Py_ssize_t used;
    Py_ssize_t size;
} Buffer;

static int
buffer_reserve(Buffer *b, Py_ssize_t more)
{
    if (b->used + more <= b->size) {
        return 0;
    }
    /* a call's entries are ~100 bytes an impression, up to ~1,000 of them: few doublings */
    Py_ssize_t size = b->size < 32768 ? 32768 : b->size;
    while (size < b->used + more) {
        if (size > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        size *= 2;
    }
    if (b->bytes == NULL) {
        b->bytes = PyBytes_FromStringAndSize(NULL, size);
        if (b->bytes == NULL) {
            return -1;
        }
    }
    else if (_PyBytes_Resize(&b->bytes, size) < 0) {
        *b = (Buffer){NULL, NULL, 0, 0}; /* b->bytes freed and NULL: nothing to write into */
        return -1;
    }
    b->data = PyBytes_AS_STRING(b->bytes);
    b->size = size;
    return 0;
}

/* The bytes written (a new reference), the buffer emptied; NULL on an error. */
static PyObject *
buffer_finish(Buffer *b)
{
    PyObject *bytes = b->bytes;
    Py_ssize_t used = b->used;
    *b = (Buffer){NULL, NULL, 0, 0};
    if (bytes == NULL) {
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    if (_PyBytes_Resize(&bytes, used) < 0) {
        return NULL;
    }
    return bytes;
}

static void
buffer_free(Buffer *b)
{
    Py_CLEAR(b->bytes);
    *b = (Buffer){NULL, NULL, 0, 0};
}

/* 1 byte per 7 bits, at least 1: ceil(bits / 7) as (bits * 9 + 64) / 64, exact for 1..64
 * bits, a multiply and a shift (the division cost more than the rest of a field) */
static inline Py_ssize_t
varint_size(uint64_t value)
{
    int bits = 64 - __builtin_clzll(value | 1);
    return (bits * 9 + 64) >> 6;
}

/* Writes at `at` (room reserved by the caller), returns where it ended. A local pointer
 * rather than the buffer's `used`: stores through a char * could alias it, so every byte
 * would reload and store it. */
static char *
put_varint(char *at, uint64_t value)
{
    while (value >= 0x80) {
        *at++ = (char)((value & 0x7F) | 0x80);
        value >>= 7;
    }
    *at++ = (char)value;
    return at;
}

/* One field's value, ready to write. */
typedef struct {
    const char *text; /* a string field: its UTF-8 bytes (NULL: an integer field) */
    Py_ssize_t length;
    uint64_t number;
    int present;
} Field;

/* 1 if an optional field's value is falsy (`if value:` in add_messages left it unset), 0 if
 * not, -1 on an error from its __bool__. */
static int
falsy(PyObject *value)
{
    if (value == Py_None) {
        return 1;
    }
    if (PyUnicode_CheckExact(value)) {
        return PyUnicode_GET_LENGTH(value) == 0;
    }
    int truth = PyObject_IsTrue(value);
    return truth < 0 ? -1 : !truth;
}

static int
string_field(PyObject *value, int optional, const char *name, Field *out)
{
    if (PyUnicode_CheckExact(value) && PyUnicode_IS_COMPACT_ASCII(value)) {
        /* the common case (keys, flag names, treatments): ASCII is its own UTF-8, stored
         * right after the object; "" is falsy, so left out, optional or not */
        out->text = (const char *)PyUnicode_DATA(value);
        out->length = PyUnicode_GET_LENGTH(value);
        out->present = out->length > 0;
        return 0;
    }
    out->present = 0;
    if (optional) {
        int skip = falsy(value);
        if (skip != 0) {
            return skip < 0 ? -1 : 0;
        }
    }
    if (PyBytes_Check(value)) {
        /* the runtime took UTF-8 bytes for a string field too (and refused others) */
        PyObject *checked = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(value),
                                                 PyBytes_GET_SIZE(value), "strict");
        if (checked == NULL) {
            return -1; /* UnicodeDecodeError, a ValueError */
        }
        Py_DECREF(checked);
        out->text = PyBytes_AS_STRING(value);
        out->length = PyBytes_GET_SIZE(value);
        out->present = out->length > 0;
        return 0;
    }
    if (!PyUnicode_Check(value)) {
        PyErr_Format(PyExc_TypeError, "impression field %s must be a str, not %.100s", name,
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    out->text = PyUnicode_AsUTF8AndSize(value, &out->length);
    if (out->text == NULL) {
        return -1; /* UnicodeEncodeError, a ValueError: a lone surrogate */
    }
    out->present = out->length > 0;
    return 0;
}

static int
out_of_range(const char *name, PyObject *value)
{
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_OverflowError)) {
        return -1;
    }
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "impression field %s: value out of range: %R", name, value);
    return -1;
}

/* An int64 (or uint64) field; `optional`: not written when falsy. */
static int
int_field(PyObject *value, int optional, int is_unsigned, const char *name, Field *out)
{
    out->present = 0;
    out->text = NULL;
    /* an int is falsy when 0, which `present` below says without asking it */
    if (optional && !PyLong_CheckExact(value)) {
        int skip = falsy(value);
        if (skip != 0) {
            return skip < 0 ? -1 : 0;
        }
    }
    if (!PyLong_Check(value) || PyBool_Check(value)) {
        PyErr_Format(PyExc_TypeError, "impression field %s must be an int, not %.100s", name,
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    if (is_unsigned) {
        unsigned long long number = PyLong_AsUnsignedLongLong(value);
        if (number == (unsigned long long)-1 && PyErr_Occurred()) {
            return out_of_range(name, value);
        }
        out->number = number;
        out->present = number != 0;
        return 0;
    }
    int overflow;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (number == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow) {
        return out_of_range(name, value);
    }
    out->number = (uint64_t)number; /* a negative int64 is written in 10 bytes, as protobuf does */
    out->present = number != 0;
    return 0;
}

enum { IMPRESSION_FIELDS = 9 };

/* The bytes a field takes, its tag included (0 when it is left out). */
static inline Py_ssize_t
field_size(const Field *f)
{
    if (!f->present) {
        return 0;
    }
    return 1 + (f->text != NULL ? varint_size((uint64_t)f->length) + f->length
                                : varint_size(f->number));
}

/* Writes field number `number` (1..15: a one-byte tag) at `at`, room reserved. */
static inline char *
put_field(char *at, int number, const Field *f)
{
    if (!f->present) {
        return at;
    }
    if (f->text != NULL) {
        *at++ = (char)(number << 3 | 2); /* length-delimited */
        at = put_varint(at, (uint64_t)f->length);
        memcpy(at, f->text, (size_t)f->length);
        return at + f->length;
    }
    *at++ = (char)(number << 3); /* varint */
    return put_varint(at, f->number);
}

/* Appends one impression, its fields ready, as an entry of the repeated field `tag`. */
static int
write_entry(Buffer *b, uint64_t tag, const Field fields[IMPRESSION_FIELDS])
{
    Py_ssize_t length = 0;
    for (int i = 0; i < IMPRESSION_FIELDS; i++) {
        length += field_size(&fields[i]);
    }
    if (buffer_reserve(b, varint_size(tag) + varint_size((uint64_t)length) + length) < 0) {
        return -1;
    }
    char *at = put_varint(b->data + b->used, tag);
    at = put_varint(at, (uint64_t)length);
    for (int i = 0; i < IMPRESSION_FIELDS; i++) {
        at = put_field(at, i + 1, &fields[i]);
    }
    b->used = at - b->data;
    return 0;
}

/* Fields 3 to 6 (flag, treatment, label, change number) from an impression's values in the
 * tuple's order (items 2 to 5), into `out[0..3]`; -1, an error set, for one the encoder
 * refuses. */
static int
middle_fields(PyObject *const *items, Field out[4])
{
    if (string_field(items[2], 0, "flag", &out[0]) < 0 ||
        string_field(items[3], 0, "treatment", &out[1]) < 0 ||
        string_field(items[4], 1, "label", &out[2]) < 0 ||
        int_field(items[5], 1, 0, "change_number", &out[3]) < 0) {
        return -1;
    }
    return 0;
}

/* Appends one Impression tuple as an entry of the repeated field `tag`. */
static int
encode_one(Buffer *b, uint64_t tag, PyObject *impression)
{
    if (!PyTuple_Check(impression) || PyTuple_GET_SIZE(impression) != IMPRESSION_FIELDS) {
        return type_error("an impression must be a 9-tuple (Impression)", impression);
    }
    PyObject *const *items = &PyTuple_GET_ITEM(impression, 0);
    /* in the tuple's order: key, bucketing key, flag, treatment, label, change number,
     * time, previous time, snapshot version; field numbers 1, 2, ... 9 in that order */
    Field fields[IMPRESSION_FIELDS];
    if (string_field(items[0], 0, "key", &fields[0]) < 0 ||
        string_field(items[1], 1, "bucketing_key", &fields[1]) < 0 ||
        middle_fields(items, &fields[2]) < 0 ||
        int_field(items[6], 0, 0, "time_ms", &fields[6]) < 0 ||
        int_field(items[7], 1, 0, "previous_time_ms", &fields[7]) < 0 ||
        int_field(items[8], 1, 1, "snapshot_version", &fields[8]) < 0) {
        return -1;
    }
    return write_entry(b, tag, fields);
}

/* The field number of a repeated message field, as the tag of its entries. */
static int
entry_tag(PyObject *field_number, uint64_t *tag)
{
    Py_ssize_t number = PyLong_Check(field_number) ? PyLong_AsSsize_t(field_number) : -1;
    if (number == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (number < 1 || number > 536870911) {
        PyErr_SetString(PyExc_ValueError, "field_number must be an int in 1..2**29-1");
        return -1;
    }
    *tag = (uint64_t)number << 3 | 2;
    return 0;
}

typedef enum { MODE_OPTIMIZED, MODE_DEBUG, MODE_NONE } Mode;

/* Fields 3-6 longer than this (long flag names and labels) are written field by field. */
enum { MIDDLE_MAX = 256, MIDDLES = 4 };

/* Bytes kept ready (fields 3 to 6, 7, 9) are copied in whole chunks of this size, which the
 * compiler inlines as two moves, rather than by a call to memcpy per part (three a lookup,
 * which cost more than the copying). So their arrays hold a chunk more than they use, and
 * an entry reserves a chunk more than it writes. */
enum { COPY_CHUNK = 16 };

static inline char *
copy_chunks(char *at, const char *from, Py_ssize_t length)
{
    for (Py_ssize_t done = 0; done < length; done += COPY_CHUNK) {
        memcpy(at + done, from + done, COPY_CHUNK);
    }
    return at + length;
}

typedef struct {
    PyTypeObject *observer_type;
    PyObject *version_name;
    PyObject *not_found; /* fader.rules.result.LABEL_NOT_FOUND */
    destructor class_dealloc; /* the tp_dealloc of every class a `class` statement makes */
} State;

/* What a (flag, result) pair gives every lookup that gets it, for the last few pairs seen:
 * its share of the observer's key (the hashes of treatment, label and `change or 0`) and, in
 * encode_all, fields 3 to 6 of its impressions (flag, treatment, label, change number) as
 * written. Why: they depend on nothing else, and a request (a batch for one flag) repeats a
 * few pairs lookup after lookup (a rollout's two treatments); worked out once, each lookup
 * hashes only its key and each entry copies the four fields in one go. The result is
 * compared by identity (a Decision is immutable, and held here so its address cannot be
 * reused) and the flag by its text (requests decode names anew). Only plain strs and ints
 * are remembered, whose hashes and truth cannot change. Replaced in turn when full. */
enum { MIDDLE_UNWRITTEN = -1, MIDDLE_TOO_LONG = -2 };

typedef struct {
    PyObject *flag;
    PyObject *result; /* NULL: an empty slot */
    PyObject *change; /* the result's change number, `or 0` */
    Py_hash_t lanes[3];
    Py_ssize_t length; /* of `bytes`, or MIDDLE_UNWRITTEN, or MIDDLE_TOO_LONG */
    char bytes[MIDDLE_MAX + COPY_CHUNK];
} Middle;

/* Everything one call works with. Object fields hold strong references. */
typedef struct {
    Mode mode;
    Observer *observer;
    PyObject *counts;
    PyObject *add_key;
    PyObject *disabled_in;
    /* process_all: Impressions made as `impression` instances, appended to `made` */
    PyTypeObject *impression;
    int untrackable; /* its instances have no __dict__: only their items refer to others */
    PyObject *made;
    /* encode_all: impressions written to `out` as entries of the repeated field `tag` */
    uint64_t tag; /* 0: process_all */
    Buffer out;
    Middle middles[MIDDLES];
    int next_middle; /* the slot replaced next */
    Py_ssize_t unencodable;
    PyObject *zero;
    Tally tally;
    Py_ssize_t emitted;
    Py_ssize_t deduplicated;
    /* the current request's snapshot, and what it gives (cached while it repeats) */
    PyObject *snap;
    PyObject *version;
    Field version_field; /* encode_all: the version, ready to write */
    int version_unencodable;
    /* encode_all: fields 7 (the request's time) and 9 (the version) as written; a time
     * length of -1: not a plain int, converted lookup by lookup */
    char time_bytes[COPY_CHUNK];
    Py_ssize_t time_length;
    char version_bytes[COPY_CHUNK];
    Py_ssize_t version_length;
    PyObject *disabled; /* NULL: no flag of the snapshot has impressions disabled */
    Remembered last_flag;
} Run;

static int
as_time(PyObject *value, long long *out)
{
    if (!PyLong_Check(value)) {
        return type_error("a time must be an int (ms)", value);
    }
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(value, &overflow); /* cheaper than PyLong_AsLongLong */
    if (overflow) {
        PyErr_SetString(PyExc_OverflowError, "a time is out of the 64-bit range");
        return -1;
    }
    if (*out == -1 && PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

/* 1 (the error cleared) if the error set is the encoder refusing a value (ValueError,
 * TypeError), 0 if it is anything else, which stands. */
static int
refused_by_encoder(void)
{
    if (!PyErr_ExceptionMatches(PyExc_ValueError) && !PyErr_ExceptionMatches(PyExc_TypeError)) {
        return 0;
    }
    PyErr_Clear();
    return 1;
}

/* Snapshot version and impressionsDisabled flags, asked again only when the snapshot
 * changes (the Python loop asked per request; both are fixed per snapshot). */
static int
use_snapshot(Run *run, PyObject *snap, PyObject *version_name)
{
    if (snap == run->snap) {
        return 0;
    }
    PyObject *version = PyObject_GetAttr(snap, version_name);
    if (version == NULL) {
        return -1;
    }
    PyObject *disabled = PyObject_CallOneArg(run->disabled_in, snap);
    if (disabled == NULL) {
        Py_DECREF(version);
        return -1;
    }
    if (!PyAnySet_Check(disabled)) {
        type_error("disabled_in must return a frozenset", disabled);
        Py_DECREF(disabled);
        Py_DECREF(version);
        return -1;
    }
    if (PySet_GET_SIZE(disabled) == 0) {
        Py_CLEAR(disabled);
    }
    run->version_unencodable = 0;
    if (run->tag != 0 &&
        int_field(version, 1, 1, "snapshot_version", &run->version_field) < 0) {
        if (!refused_by_encoder()) {
            Py_XDECREF(disabled);
            Py_DECREF(version);
            return -1;
        }
        run->version_unencodable = 1; /* each of its impressions is counted as unencodable */
    }
    else if (run->tag != 0) {
        run->version_length = put_field(run->version_bytes, 9, &run->version_field) -
                              run->version_bytes;
    }
    Py_INCREF(snap);
    Py_XSETREF(run->snap, snap);
    Py_XSETREF(run->version, version);
    Py_XSETREF(run->disabled, disabled);
    return 0;
}

static int
emit(Run *run, PyObject *const fields[9])
{
    PyTypeObject *type = run->impression;
    PyObject *made = type->tp_alloc(type, 9);
    if (made == NULL) {
        return -1;
    }
#if PY_VERSION_HEX >= 0x030E0000
    /* 3.14 tuples cache their hash; tp_alloc leaves it zeroed, which means "computed: 0" */
    ((PyTupleObject *)made)->ob_hash = -1;
#endif
    int untrack = run->untrackable;
    for (int i = 0; i < 9; i++) {
        Py_INCREF(fields[i]);
        PyTuple_SET_ITEM(made, i, fields[i]);
        untrack = untrack && atomic(fields[i]);
    }
    /* An impression of strings and ints can be in no reference cycle: untracked, the
     * garbage collector never walks it (debug mode makes one per lookup, and walking them
     * cost more than making them). CPython untracks such plain tuples itself, lazily, but
     * never a subclass's. */
    if (untrack) {
        PyObject_GC_UnTrack(made);
    }
    int status = PyList_Append(run->made, made);
    Py_DECREF(made);
    run->emitted++;
    return status;
}

static int
str_or_none(PyObject *value, const char *what)
{
    if (value != Py_None && !PyUnicode_Check(value)) {
        return type_error(what, value);
    }
    return 0;
}

/* An impression the encoder refused (a str that is not valid Unicode, an int out of its
 * field's range or of the wrong type: what encode_impressions refuses, and what the upload
 * used to set aside as unencodable) is counted and skipped; any other error stands. */
static int
unencodable(Run *run)
{
    if (!refused_by_encoder()) {
        return -1;
    }
    run->unencodable++;
    return 0;
}

/* `change or 0` into *out (borrowed), as the observer's key holds it; -1 (an error set) if
 * an odd value's __bool__ raises. */
static int
change_or_zero(Run *run, PyObject *change, PyObject **out)
{
    int nonzero = change == Py_None ? 0 : PyObject_IsTrue(change);
    if (nonzero < 0) {
        return -1;
    }
    *out = nonzero ? change : run->zero;
    return 0;
}

/* The slot of (flag, result), or NULL. */
static Middle *
middle_of(Run *run, PyObject *flag, PyObject *result)
{
    for (int i = 0; i < MIDDLES; i++) {
        Middle *m = &run->middles[i];
        if (m->result == result && same_str(m->flag, flag)) {
            return m;
        }
    }
    return NULL;
}

/* Takes the next slot for (flag, result) and sets *out to it, when its treatment, label and
 * change number are plain strs, ints or None (*out NULL when not: their hashes and truth are
 * then asked lookup by lookup, as the Python loop asked them). */
static int
remember_middle(Run *run, PyObject *flag, PyObject *result, Middle **out)
{
    PyObject *treatment = PyTuple_GET_ITEM(result, 0);
    PyObject *label = PyTuple_GET_ITEM(result, 1);
    PyObject *change = PyTuple_GET_ITEM(result, 3);
    *out = NULL;
    if (!PyUnicode_CheckExact(treatment) || (label != Py_None && !PyUnicode_CheckExact(label)) ||
        (change != Py_None && !PyLong_CheckExact(change))) {
        return 0;
    }
    if (change_or_zero(run, change, &change) < 0) { /* a plain int: it cannot fail */
        return -1;
    }
    Py_hash_t lanes[3] = {hash_of(treatment), hash_of(label), hash_of(change)};
    if (lanes[0] == -1 || lanes[1] == -1 || lanes[2] == -1) {
        return -1;
    }
    Middle *m = &run->middles[run->next_middle];
    run->next_middle = (run->next_middle + 1) % MIDDLES;
    /* the slot whole before what it held is let go */
    PyObject *old[3] = {m->flag, m->result, m->change};
    m->flag = Py_NewRef(flag);
    m->result = Py_NewRef(result);
    m->change = Py_NewRef(change);
    memcpy(m->lanes, lanes, sizeof lanes);
    m->length = MIDDLE_UNWRITTEN;
    for (int i = 0; i < 3; i++) {
        Py_XDECREF(old[i]);
    }
    *out = m;
    return 0;
}

/* Writes fields 3 to 6 into the slot's bytes (-1: one of them is unencodable, an error set). */
static int
write_middle(Middle *m, PyObject *const parts[7])
{
    Field fields[4];
    if (middle_fields(parts, fields) < 0) {
        return -1;
    }
    Py_ssize_t length = 0;
    for (int i = 0; i < 4; i++) {
        length += field_size(&fields[i]);
    }
    if (length > MIDDLE_MAX) {
        m->length = MIDDLE_TOO_LONG;
        return 0;
    }
    char *at = m->bytes;
    for (int i = 0; i < 4; i++) {
        at = put_field(at, i + 3, &fields[i]);
    }
    m->length = length;
    return 0;
}

/* An impression whose fields are converted one by one: its (flag, result) has no slot, or
 * fields 3 to 6 too long for one, or its time is not a plain int. */
static int
encode_fields(Run *run, PyObject *const parts[7], Field fields[IMPRESSION_FIELDS],
              int64_t previous_ms)
{
    if (middle_fields(parts, &fields[2]) < 0 ||
        int_field(parts[6], 0, 0, "time_ms", &fields[6]) < 0) {
        return unencodable(run);
    }
    fields[7] = (Field){.text = NULL, .number = (uint64_t)previous_ms, .present = previous_ms != 0};
    fields[8] = run->version_field;
    if (write_entry(&run->out, run->tag, fields) < 0) {
        return -1;
    }
    run->emitted++;
    return 0;
}

/* encode_all's emit: the impression written as an entry straight from its parts, the bytes
 * encode_impressions writes for the Impression that process_all would have made. Why: no
 * Impression object to make, keep, walk in batches and free (debug mode makes one per
 * lookup, and those steps cost more than the lookup). `middle`: the slot of its (flag,
 * result), or NULL; `previous_ms` 0: none. */
static int
encode_lookup(Run *run, PyObject *const parts[7], Middle *middle, int64_t previous_ms)
{
    if (run->version_unencodable) {
        run->unencodable++;
        return 0;
    }
    Field fields[IMPRESSION_FIELDS];
    if (string_field(parts[0], 0, "key", &fields[0]) < 0 ||
        string_field(parts[1], 1, "bucketing_key", &fields[1]) < 0) {
        return unencodable(run);
    }
    if (middle != NULL && middle->length == MIDDLE_UNWRITTEN && write_middle(middle, parts) < 0) {
        return unencodable(run);
    }
    if (middle == NULL || middle->length < 0 || run->time_length < 0) {
        return encode_fields(run, parts, fields, previous_ms);
    }
    Field previous = {.text = NULL, .number = (uint64_t)previous_ms, .present = previous_ms != 0};
    Py_ssize_t length = field_size(&fields[0]) + field_size(&fields[1]) + middle->length +
                        run->time_length + field_size(&previous) + run->version_length;
    Buffer *b = &run->out;
    Py_ssize_t room = varint_size(run->tag) + varint_size((uint64_t)length) + length;
    if (buffer_reserve(b, room + COPY_CHUNK) < 0) {
        return -1;
    }
    char *at = put_varint(b->data + b->used, run->tag);
    at = put_varint(at, (uint64_t)length);
    at = put_field(at, 1, &fields[0]);
    at = put_field(at, 2, &fields[1]);
    at = copy_chunks(at, middle->bytes, middle->length);
    at = copy_chunks(at, run->time_bytes, run->time_length);
    at = put_field(at, 8, &previous);
    at = copy_chunks(at, run->version_bytes, run->version_length);
    b->used = at - b->data;
    run->emitted++;
    return 0;
}

/* The next few lookups of a request, looked at before they are applied: the hashes of their
 * keys, and their observer slots prefetched. Why: a table of more than a few thousand keys
 * outgrows the caches, and a lookup that finds its slot only when it probes waits for memory
 * (~100 ns, the largest single cost of a lookup with impressions on, measured with perf at
 * 50,000 keys); asked ahead, the waits of several lookups overlap. Only plain strs, whose
 * hashes cannot change and take no Python code, are looked at, and only results a slot
 * remembers, whose share of the key depends on them alone: what is found is what the lookup
 * would work out, used again for the same lookup object only, held meanwhile. */
enum { AHEAD = 16 };

typedef struct {
    Py_hash_t key_hash; /* -1: not known */
    Py_hash_t digest;   /* the observer's key; valid if `known` */
    int known;
} Known;

typedef struct {
    PyObject *answers[AHEAD]; /* strong references */
    Known known[AHEAD];
    Py_ssize_t count;
} Ahead;

static void
ahead_clear(Ahead *ahead)
{
    for (Py_ssize_t i = 0; i < ahead->count; i++) {
        Py_DECREF(ahead->answers[i]);
    }
    ahead->count = 0;
}

/* The hash of a plain str (hash_of runs no Python code for one), or -1 for anything else. */
static Py_hash_t
plain_hash(PyObject *text)
{
    return PyUnicode_CheckExact(text) && PyUnicode_IS_COMPACT(text) ? hash_of(text) : -1;
}

/* A flag's hash when it costs nothing: cached in it, or that of the last flag if it is the
 * same text (requests decode their names anew); -1 if not known. */
static Py_hash_t
known_flag_hash(Run *run, PyObject *flag)
{
    if (!PyUnicode_CheckExact(flag)) {
        return -1;
    }
    Py_hash_t cached = ((PyASCIIObject *)flag)->hash;
    if (cached != -1) {
        return cached;
    }
    Remembered *last = &run->last_flag;
    return last->text != NULL && same_str(last->text, flag) ? last->hash : -1;
}

static void
prefetch_slot(const Generation *g, int64_t digest)
{
    if (g->slots != NULL && digest != 0) {
        __builtin_prefetch(&g->slots[slot_of(g, digest)]);
    }
}

/* Looks at lookups[from:from + AHEAD] into an empty `ahead`: nothing here runs Python code
 * or changes the state. */
static void
look_ahead(Run *run, PyObject *lookups, Py_ssize_t from, Ahead *ahead)
{
    if (run->mode == MODE_NONE) {
        return;
    }
    Py_ssize_t end = PySequence_Fast_GET_SIZE(lookups);
    for (Py_ssize_t i = from; i < end && i < from + AHEAD; i++) {
        PyObject *answer = PySequence_Fast_GET_ITEM(lookups, i);
        Known *known = &ahead->known[ahead->count];
        ahead->answers[ahead->count++] = Py_NewRef(answer);
        *known = (Known){.key_hash = -1, .known = 0};
        if (!PyTuple_CheckExact(answer) || PyTuple_GET_SIZE(answer) != 4) {
            continue;
        }
        known->key_hash = plain_hash(PyTuple_GET_ITEM(answer, 0));
        PyObject *flag = PyTuple_GET_ITEM(answer, 2);
        Py_hash_t flag_hash = known->key_hash == -1 ? -1 : known_flag_hash(run, flag);
        Middle *middle = flag_hash == -1 ? NULL : middle_of(run, flag, PyTuple_GET_ITEM(answer, 3));
        if (middle == NULL) {
            continue;
        }
        Py_hash_t lanes[FIELDS] = {known->key_hash, flag_hash};
        memcpy(&lanes[2], middle->lanes, sizeof middle->lanes);
        known->digest = tuple_hash(lanes);
        known->known = 1;
        prefetch_slot(&run->observer->young, known->digest);
        prefetch_slot(&run->observer->old, known->digest);
    }
}

/* One lookup: (key, bucketing key, flag, (treatment, label, config, change number)). */
static int
lookup(Run *run, State *state, PyObject *answer, PyObject *time_obj, long long time_ms,
       long long hour, const Known *known)
{
    if (!PyTuple_Check(answer) || PyTuple_GET_SIZE(answer) != 4) {
        return type_error("a lookup must be a 4-tuple (key, bucketing key, flag, result)",
                          answer);
    }
    PyObject *key = PyTuple_GET_ITEM(answer, 0);
    PyObject *bucketing_key = PyTuple_GET_ITEM(answer, 1);
    PyObject *flag = PyTuple_GET_ITEM(answer, 2);
    PyObject *result = PyTuple_GET_ITEM(answer, 3);
    if (!PyTuple_Check(result) || PyTuple_GET_SIZE(result) != 4) {
        return type_error("a result must be a 4-tuple Decision", result);
    }
    PyObject *treatment = PyTuple_GET_ITEM(result, 0);
    PyObject *label = PyTuple_GET_ITEM(result, 1);
    PyObject *change = PyTuple_GET_ITEM(result, 3);
    if (!PyUnicode_Check(key)) {
        return type_error("a key must be a str", key);
    }
    if (!PyUnicode_Check(flag)) {
        return type_error("a flag must be a str", flag);
    }
    if (!PyUnicode_Check(treatment)) {
        return type_error("a treatment must be a str", treatment);
    }
    if (str_or_none(bucketing_key, "a bucketing key must be a str or None") < 0 ||
        str_or_none(label, "a label must be a str or None") < 0) {
        return -1;
    }
    if (change != Py_None && !PyLong_Check(change)) {
        return type_error("a change number must be an int or None", change);
    }
    /* the length first: most labels differ from it there, and a full comparison per
     * lookup cost a tenth of the loop */
    if (label != Py_None &&
        (label == state->not_found ||
         (PyUnicode_GET_LENGTH(label) == PyUnicode_GET_LENGTH(state->not_found) &&
          PyUnicode_Compare(label, state->not_found) == 0))) {
        return 0;
    }
    Py_hash_t flag_hash = remembered_hash(&run->last_flag, flag);
    if (flag_hash == -1) {
        return -1;
    }
    if (run->mode == MODE_NONE || run->disabled != NULL) {
        int disabled = run->mode == MODE_NONE;
        if (!disabled) {
            disabled = PySet_Contains(run->disabled, flag);
            if (disabled < 0) {
                return -1;
            }
        }
        if (disabled) {
            if (tally_add(&run->tally, flag, flag_hash, hour) < 0) {
                return -1;
            }
            PyObject *args[3] = {flag, key, time_obj};
            PyObject *done = PyObject_Vectorcall(run->add_key, args, 3, NULL);
            Py_XDECREF(done);
            return done == NULL ? -1 : 0;
        }
    }
    Middle *middle = middle_of(run, flag, result);
    if (middle == NULL && remember_middle(run, flag, result, &middle) < 0) {
        return -1;
    }
    if (middle != NULL) {
        change = middle->change;
    }
    else if (change_or_zero(run, change, &change) < 0) {
        return -1;
    }
    /* hash((key, flag, treatment, label, change)), one item at a time: a str subclass's
     * __hash__ may raise, and no hash may be asked with an exception set */
    Py_hash_t hash;
    if (known->known) {
        hash = known->digest;
    }
    else {
        Py_hash_t lanes[FIELDS] = {known->key_hash != -1 ? known->key_hash : hash_of(key),
                                   flag_hash};
        if (lanes[0] == -1) {
            return -1;
        }
        if (middle != NULL) {
            memcpy(&lanes[2], middle->lanes, sizeof middle->lanes);
        }
        else {
            PyObject *const items[FIELDS] = {key, flag, treatment, label, change};
            for (int i = 2; i < FIELDS; i++) {
                lanes[i] = hash_of(items[i]);
                if (lanes[i] == -1) {
                    return -1;
                }
            }
        }
        hash = tuple_hash(lanes);
    }
    int64_t previous_ms;
    int found = observer_test_and_set(run->observer, hash, time_ms, &previous_ms);
    if (found < 0) {
        return -1;
    }
    if (found && run->mode == MODE_OPTIMIZED) {
        if (tally_add(&run->tally, flag, flag_hash, hour) < 0) {
            return -1;
        }
        if (previous_ms >= hour) {
            run->deduplicated++;
            return 0;
        }
    }
    if (run->tag != 0) {
        PyObject *const parts[7] = {key, bucketing_key, flag, treatment, label, change, time_obj};
        return encode_lookup(run, parts, middle, found ? previous_ms : 0);
    }
    PyObject *previous = Py_None;
    if (found) {
        /* an out-of-order time came back as the impression's own: share its object */
        previous = previous_ms == time_ms ? Py_NewRef(time_obj) : PyLong_FromLongLong(previous_ms);
        if (previous == NULL) {
            return -1;
        }
    }
    PyObject *made[9] = {
        key, bucketing_key, flag, treatment, label, change, time_obj, previous, run->version,
    };
    int status = emit(run, made);
    if (found) {
        Py_DECREF(previous);
    }
    return status;
}

/* One request: (snapshot, time ms, lookups). */
static int
request(Run *run, State *state, PyObject *item)
{
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
        return type_error("a request must be a 3-tuple (snapshot, time ms, lookups)", item);
    }
    PyObject *time_obj = PyTuple_GET_ITEM(item, 1);
    long long time_ms;
    if (as_time(time_obj, &time_ms) < 0) {
        return -1;
    }
    /* Python's floor modulo, without overflow at the low end of the range */
    long long offset = time_ms % HOUR_MS;
    if (offset < 0) {
        offset += HOUR_MS;
    }
    if (time_ms < LLONG_MIN + HOUR_MS) {
        PyErr_SetString(PyExc_OverflowError, "a time is out of range");
        return -1;
    }
    long long hour = time_ms - offset;
    if (run->tag != 0) {
        run->time_length = -1;
        if (PyLong_CheckExact(time_obj)) {
            Field time = {.text = NULL, .number = (uint64_t)time_ms, .present = time_ms != 0};
            run->time_length = put_field(run->time_bytes, 7, &time) - run->time_bytes;
        }
    }
    if (use_snapshot(run, PyTuple_GET_ITEM(item, 0), state->version_name) < 0) {
        return -1;
    }
    PyObject *lookups = PyTuple_GET_ITEM(item, 2);
    if (!PyList_Check(lookups) && !PyTuple_Check(lookups)) {
        return type_error("lookups must be a list or a tuple", lookups);
    }
    /* the size is read again every lookup: add_key runs Python code, which could shrink
     * the list, as the Python loop's `for` would see */
    static const Known unknown = {.key_hash = -1, .known = 0};
    Ahead ahead = {.count = 0};
    int status = 0;
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; status == 0; i++, at++) {
        if (at == AHEAD) {
            ahead_clear(&ahead); /* may free lookups a callback replaced: Python code */
            at = 0;
        }
        if (i >= PySequence_Fast_GET_SIZE(lookups)) {
            break;
        }
        if (at == 0) {
            look_ahead(run, lookups, i, &ahead);
        }
        PyObject *answer = Py_NewRef(PySequence_Fast_GET_ITEM(lookups, i));
        /* what was found ahead, if it is still the same lookup there (held: its address is
         * its own) */
        const Known *known = at < ahead.count && ahead.answers[at] == answer ? &ahead.known[at]
                                                                             : &unknown;
        status = lookup(run, state, answer, time_obj, time_ms, hour, known);
        Py_DECREF(answer);
    }
    ahead_clear(&ahead);
    return status;
}

static int
parse_mode(PyObject *mode, Mode *out)
{
    if (!PyUnicode_Check(mode)) {
        return type_error("mode must be a str", mode);
    }
    if (PyUnicode_CompareWithASCIIString(mode, "optimized") == 0) {
        *out = MODE_OPTIMIZED;
    }
    else if (PyUnicode_CompareWithASCIIString(mode, "debug") == 0) {
        *out = MODE_DEBUG;
    }
    else if (PyUnicode_CompareWithASCIIString(mode, "none") == 0) {
        *out = MODE_NONE;
    }
    else {
        PyErr_Format(PyExc_ValueError, "unknown impressions mode %R", mode);
        return -1;
    }
    return 0;
}

/* The arguments process_all and encode_all share: mode, observer, counts, add_key,
 * disabled_in. */
static int
start(Run *run, State *state, PyObject *const *args)
{
    if (parse_mode(args[1], &run->mode) < 0) {
        return -1;
    }
    if (!PyObject_TypeCheck(args[2], state->observer_type)) {
        return type_error("observer must be a fader._modes.Observer", args[2]);
    }
    run->observer = (Observer *)Py_NewRef(args[2]);
    if (!PyDict_Check(args[3])) {
        return type_error("counts must be a dict", args[3]);
    }
    if (!PyCallable_Check(args[4]) || !PyCallable_Check(args[5])) {
        return type_error("add_key and disabled_in must be callable",
                          PyCallable_Check(args[4]) ? args[5] : args[4]);
    }
    run->counts = Py_NewRef(args[3]);
    run->add_key = Py_NewRef(args[4]);
    run->disabled_in = Py_NewRef(args[5]);
    run->zero = PyLong_FromLong(0);
    return run->zero == NULL ? -1 : 0;
}

/* process_all's own arguments: the impression type and the list to append to. */
static int
start_objects(Run *run, State *state, PyObject *const *args)
{
    if (!PyType_Check(args[6]) || !PyType_IsSubtype((PyTypeObject *)args[6], &PyTuple_Type)) {
        return type_error("impression must be a tuple subclass (a NamedTuple)", args[6]);
    }
    /* emit makes an instance as tp_alloc(type, 9) and 9 items, which is whole only for tuple
     * and the classes of `class` statements on it: a struct sequence (time.struct_time,
     * sys.flags) keeps more items than that, and its dealloc read past the allocation */
    for (PyTypeObject *t = (PyTypeObject *)args[6]; t != &PyTuple_Type; t = t->tp_base) {
        if (t == NULL || t->tp_dealloc != state->class_dealloc) {
            return type_error("impression must be tuple or a class on it (a NamedTuple)",
                              args[6]);
        }
    }
    if (!PyList_Check(args[7])) {
        return type_error("made must be a list", args[7]);
    }
    run->impression = (PyTypeObject *)Py_NewRef(args[6]);
    run->untrackable = run->impression->tp_dictoffset == 0 && PyType_IS_GC(run->impression);
    run->made = Py_NewRef(args[7]);
    return 0;
}

static void
finish(Run *run)
{
    Py_XDECREF((PyObject *)run->observer);
    Py_XDECREF(run->add_key);
    Py_XDECREF(run->disabled_in);
    Py_XDECREF(run->counts);
    Py_XDECREF((PyObject *)run->impression);
    Py_XDECREF(run->made);
    buffer_free(&run->out);
    for (int i = 0; i < MIDDLES; i++) {
        Py_XDECREF(run->middles[i].flag);
        Py_XDECREF(run->middles[i].result);
        Py_XDECREF(run->middles[i].change);
    }
    Py_XDECREF(run->zero);
    Py_XDECREF(run->snap);
    Py_XDECREF(run->version);
    Py_XDECREF(run->disabled);
    Py_XDECREF(run->last_flag.text);
}

PyDoc_STRVAR(encode_impressions_doc,
"encode_impressions(impressions, field_number, /)\n"
"--\n\n"
"The protobuf wire bytes of `impressions` as entries of the repeated fader.v1.Impression\n"
"field `field_number`: what add_messages and SerializeToString wrote for them.");

static PyObject *
encode_impressions(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "encode_impressions takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyList_Check(args[0])) {
        type_error("impressions must be a list", args[0]);
        return NULL;
    }
    uint64_t tag;
    if (entry_tag(args[1], &tag) < 0) {
        return NULL;
    }
    Buffer b = {NULL, NULL, 0, 0};
    PyObject *list = args[0];
    /* an odd value's __bool__ is Python code, which could change the list: its size is read
     * again every time, and the impression being encoded is held */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *impression = Py_NewRef(PyList_GET_ITEM(list, i));
        int status = encode_one(&b, tag, impression);
        Py_DECREF(impression);
        if (status < 0) {
            buffer_free(&b);
            return NULL;
        }
    }
    return buffer_finish(&b);
}

/* Reads a varint of at most 10 bytes; NULL if it runs past `end` or is longer. */
static const unsigned char *
read_varint(const unsigned char *at, const unsigned char *end, uint64_t *value)
{
    uint64_t result = 0;
    for (int shift = 0; shift < 70 && at < end; shift += 7) {
        unsigned char byte = *at++;
        result |= (uint64_t)(byte & 0x7F) << shift;
        if (byte < 0x80) {
            *value = result;
            return at;
        }
    }
    return NULL;
}

static int
as_size(PyObject *value, const char *what, Py_ssize_t *out)
{
    if (!PyLong_Check(value)) {
        return type_error(what, value);
    }
    *out = PyLong_AsSsize_t(value);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

PyDoc_STRVAR(cut_entries_doc,
"cut_entries(entries, field_number, start, max_entries, max_bytes, /)\n"
"--\n\n"
"Walks the entries of the repeated field `field_number` in `entries` from byte `start`,\n"
"and stops after `max_entries` of them, after the one that reaches `max_bytes` bytes, or\n"
"at the end. Returns (end, taken). ValueError if it meets anything but such entries.");

/* Why: a batch is cut where it reaches its limits, between two entries, and the entries'
 * bytes are all that says where one ends. */
static PyObject *
cut_entries(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "cut_entries takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    uint64_t tag;
    Py_ssize_t start, max_entries, max_bytes;
    if (entry_tag(args[1], &tag) < 0 || as_size(args[2], "start must be an int", &start) < 0 ||
        as_size(args[3], "max_entries must be an int", &max_entries) < 0 ||
        as_size(args[4], "max_bytes must be an int", &max_bytes) < 0) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (start < 0 || start > view.len) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "start %zd is outside the %zd bytes", start, view.len);
        return NULL;
    }
    const unsigned char *base = view.buf;
    const unsigned char *at = base + start;
    const unsigned char *end = base + view.len;
    Py_ssize_t taken = 0;
    while (at < end && taken < max_entries && (at - base) - start < max_bytes) {
        uint64_t got, length;
        const unsigned char *next = read_varint(at, end, &got);
        if (next != NULL && got == tag) {
            next = read_varint(next, end, &length);
        }
        if (next == NULL || got != tag || length > (uint64_t)(end - next)) {
            Py_ssize_t where = at - base;
            PyBuffer_Release(&view);
            PyErr_Format(PyExc_ValueError, "no entry of field %d at byte %zd",
                         (int)(tag >> 3), where);
            return NULL;
        }
        at = next + length;
        taken++;
    }
    Py_ssize_t stop = at - base;
    PyBuffer_Release(&view);
    return Py_BuildValue("(nn)", stop, taken);
}

/* Runs every request of the iterable `requests`, then merges the counts (on errors too, as
 * the Python loop had counted everything before the bad lookup). -1: an exception is set. */
static int
run_all(Run *run, State *state, PyObject *requests)
{
    PyObject *iterator = PyObject_GetIter(requests);
    if (iterator != NULL) {
        PyObject *item;
        while ((item = PyIter_Next(iterator)) != NULL) {
            int status = request(run, state, item);
            Py_DECREF(item);
            if (status < 0) {
                break;
            }
        }
        Py_DECREF(iterator);
    }
    int failed = PyErr_Occurred() != NULL;
    if (tally_merge(&run->tally, run->counts) < 0) {
        failed = 1;
    }
    return failed ? -1 : 0;
}

PyDoc_STRVAR(process_all_doc,
"process_all(requests, mode, observer, counts, add_key, disabled_in, impression, made)\n"
"--\n\n"
"Applies the impressions mode to recorded requests; returns (emitted, deduplicated).");

static PyObject *
process_all(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "process_all takes 8 arguments (%zd given)", nargs);
        return NULL;
    }
    State *state = PyModule_GetState(module);
    Run run = {0};
    PyObject *result = NULL;
    if (start(&run, state, args) == 0 && start_objects(&run, state, args) == 0 &&
        run_all(&run, state, args[0]) == 0) {
        result = Py_BuildValue("(nn)", run.emitted, run.deduplicated);
    }
    finish(&run);
    return result;
}

PyDoc_STRVAR(encode_all_doc,
"encode_all(requests, mode, observer, counts, add_key, disabled_in, field_number)\n"
"--\n\n"
"process_all, with the impressions written as entries of a repeated fader.v1.Impression\n"
"field; returns (entries, emitted, deduplicated, unencodable).");

static PyObject *
encode_all(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "encode_all takes 7 arguments (%zd given)", nargs);
        return NULL;
    }
    State *state = PyModule_GetState(module);
    Run run = {0};
    PyObject *result = NULL;
    if (start(&run, state, args) == 0 && entry_tag(args[6], &run.tag) == 0 &&
        run_all(&run, state, args[0]) == 0) {
        PyObject *entries = buffer_finish(&run.out);
        if (entries != NULL) {
            result = Py_BuildValue("(Nnnn)", entries, run.emitted, run.deduplicated,
                                   run.unencodable);
        }
    }
    finish(&run);
    return result;
}

static PyMethodDef methods[] = {
    {"process_all", (PyCFunction)(void (*)(void))process_all, METH_FASTCALL, process_all_doc},
    {"encode_all", (PyCFunction)(void (*)(void))encode_all, METH_FASTCALL, encode_all_doc},
    {"cut_entries", (PyCFunction)(void (*)(void))cut_entries, METH_FASTCALL, cut_entries_doc},
    {"encode_impressions", (PyCFunction)(void (*)(void))encode_impressions, METH_FASTCALL,
     encode_impressions_doc},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *module)
{
    State *state = PyModule_GetState(module);
    state->observer_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &Observer_spec, NULL);
    if (state->observer_type == NULL ||
        PyModule_AddType(module, state->observer_type) < 0) {
        return -1;
    }
    PyObject *recorder_type = PyType_FromModuleAndSpec(module, &Recorder_spec, NULL);
    if (recorder_type == NULL) {
        return -1;
    }
    int added = PyModule_AddType(module, (PyTypeObject *)recorder_type);
    Py_DECREF(recorder_type);
    if (added < 0) {
        return -1;
    }
    state->version_name = PyUnicode_InternFromString("version");
    if (state->version_name == NULL) {
        return -1;
    }
    /* a probe class, for the tp_dealloc that start() asks of the impression type's classes */
    PyObject *probe = PyObject_CallFunction((PyObject *)&PyType_Type, "s(O){}", "probe",
                                           (PyObject *)&PyTuple_Type);
    if (probe == NULL) {
        return -1;
    }
    state->class_dealloc = ((PyTypeObject *)probe)->tp_dealloc;
    Py_DECREF(probe);
    /* the label comes from its one definition, not a copy of the string */
    PyObject *result = PyImport_ImportModule("fader.rules.result");
    if (result == NULL) {
        return -1;
    }
    state->not_found = PyObject_GetAttrString(result, "LABEL_NOT_FOUND");
    Py_DECREF(result);
    if (state->not_found == NULL) {
        return -1;
    }
    if (!PyUnicode_Check(state->not_found)) {
        type_error("LABEL_NOT_FOUND must be a str", state->not_found);
        return -1;
    }
    return 0;
}

static int
traverse(PyObject *module, visitproc visit, void *arg)
{
    State *state = PyModule_GetState(module);
    if (state != NULL) {
        Py_VISIT(state->observer_type);
        Py_VISIT(state->not_found);
    }
    return 0;
}

static int
clear(PyObject *module)
{
    State *state = PyModule_GetState(module);
    if (state != NULL) {
        Py_CLEAR(state->observer_type);
        Py_CLEAR(state->version_name);
        Py_CLEAR(state->not_found);
    }
    return 0;
}

static void
free_module(void *module)
{
    clear((PyObject *)module);
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fader._modes",
    .m_doc = "ImpressionModes.process_all's loop in C (see fader.impressions).",
    .m_size = sizeof(State),
    .m_methods = methods,
    .m_slots = slots,
    .m_traverse = traverse,
    .m_clear = clear,
    .m_free = free_module,
};

PyMODINIT_FUNC
PyInit__modes(void)
{
    return PyModuleDef_Init(&module_def);
}
