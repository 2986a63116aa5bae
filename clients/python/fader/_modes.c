/* fader._modes: the impression observer and the loop of
 * fader.impressions.ImpressionModes.process_all, in C.
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
 * - each impression left is an `Impression` namedtuple appended to `made`.
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

/* PyObject_Hash, without its call through the type for a str whose hash is already cached
 * (flags, treatments and labels are the snapshot's own strings: only keys are new). */
static inline Py_hash_t
hash_of(PyObject *value)
{
    if (PyUnicode_CheckExact(value)) {
        Py_hash_t cached = ((PyASCIIObject *)value)->hash;
        if (cached != -1) {
            return cached;
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
 * that compare int objects, and ~100 bytes per hash; a table of (hash, time) pairs costs
 * one probe and 17-68 bytes per hash. Open addressing without deletion (a generation is
 * only ever dropped whole), at most half full. */
typedef struct {
    int64_t *digests;
    int64_t *times;
    uint8_t *used;
    Py_ssize_t mask; /* size - 1, a power of two; -1 before the first insertion */
    Py_ssize_t count;
} Generation;

typedef struct {
    PyObject_HEAD
    Generation young;
    Generation old;
    Py_ssize_t capacity;
} Observer;

static void
generation_free(Generation *g)
{
    PyMem_Free(g->digests);
    PyMem_Free(g->times);
    PyMem_Free(g->used);
    g->digests = g->times = NULL;
    g->used = NULL;
    g->mask = -1;
    g->count = 0;
}

/* hashes are well mixed already, but the low bits alone would make long runs for hashes
 * of small ints (hash(5) == 5): Fibonacci hashing spreads them */
static Py_ssize_t
slot_of(const Generation *g, int64_t digest)
{
    return (Py_ssize_t)(((uint64_t)digest * 11400714819323198485ULL) >> 17) & g->mask;
}

/* The slot holding `digest`, or the empty slot where it would go. */
static Py_ssize_t
generation_probe(const Generation *g, int64_t digest)
{
    Py_ssize_t at = slot_of(g, digest);
    while (g->used[at] && g->digests[at] != digest) {
        at = (at + 1) & g->mask;
    }
    return at;
}

static int
generation_find(const Generation *g, int64_t digest, int64_t *time)
{
    if (g->count == 0) {
        return 0;
    }
    Py_ssize_t at = generation_probe(g, digest);
    if (!g->used[at]) {
        return 0;
    }
    *time = g->times[at];
    return 1;
}

static int
generation_resize(Generation *g, Py_ssize_t size)
{
    Generation bigger = {
        PyMem_Malloc((size_t)size * sizeof(int64_t)),
        PyMem_Malloc((size_t)size * sizeof(int64_t)),
        PyMem_Calloc((size_t)size, 1),
        size - 1,
        g->count,
    };
    if (bigger.digests == NULL || bigger.times == NULL || bigger.used == NULL) {
        generation_free(&bigger);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i <= g->mask; i++) {
        if (g->used[i]) {
            Py_ssize_t at = generation_probe(&bigger, g->digests[i]);
            bigger.used[at] = 1;
            bigger.digests[at] = g->digests[i];
            bigger.times[at] = g->times[i];
        }
    }
    generation_free(g);
    *g = bigger;
    return 0;
}

static int
generation_put(Generation *g, int64_t digest, int64_t time)
{
    if ((g->count + 1) * 2 > g->mask + 1) {
        if (generation_resize(g, g->mask < 0 ? 16 : (g->mask + 1) * 2) < 0) {
            return -1;
        }
    }
    Py_ssize_t at = generation_probe(g, digest);
    if (!g->used[at]) {
        g->used[at] = 1;
        g->digests[at] = digest;
        g->count++;
    }
    g->times[at] = time;
    return 0;
}

/* The previous time `digest` was seen (returns 1, in *previous) or 0 if not remembered,
 * storing the later of the two. Like Split's Java SDK, an out-of-order older time is
 * returned as the earlier of the two, so no previous time is after the impression. */
static int
observer_test_and_set(Observer *self, int64_t digest, int64_t time, int64_t *previous)
{
    int in_young = generation_find(&self->young, digest, previous);
    int found = in_young || generation_find(&self->old, digest, previous);
    int status = 0;
    if (!found || time > *previous) {
        status = generation_put(&self->young, digest, time);
    }
    else if (!in_young) {
        status = generation_put(&self->young, digest, *previous); /* remembered for longer */
    }
    if (status < 0) {
        return -1;
    }
    if (self->young.count >= self->capacity) {
        generation_free(&self->old);
        self->old = self->young;
        self->young = (Generation){NULL, NULL, NULL, -1, 0};
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
    self->young = self->old = (Generation){NULL, NULL, NULL, -1, 0};
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

static PyObject *
generation_dict(const Generation *g)
{
    PyObject *dict = PyDict_New();
    for (Py_ssize_t i = 0; dict != NULL && i <= g->mask; i++) {
        if (g->used[i]) {
            PyObject *digest = PyLong_FromLongLong(g->digests[i]);
            PyObject *time = PyLong_FromLongLong(g->times[i]);
            if (digest == NULL || time == NULL || PyDict_SetItem(dict, digest, time) < 0) {
                Py_CLEAR(dict);
            }
            Py_XDECREF(digest);
            Py_XDECREF(time);
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
    for (Py_ssize_t i = 0; i <= self->old.mask; i++) {
        if (self->old.used[i] &&
            !generation_find(&self->young, self->old.digests[i], &ignored)) {
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

typedef enum { MODE_OPTIMIZED, MODE_DEBUG, MODE_NONE } Mode;

typedef struct {
    PyTypeObject *observer_type;
    PyObject *version_name;
    PyObject *not_found; /* fader.rules.result.LABEL_NOT_FOUND */
    destructor class_dealloc; /* the tp_dealloc of every class a `class` statement makes */
} State;

/* Everything one call works with. Object fields hold strong references. */
typedef struct {
    Mode mode;
    Observer *observer;
    PyObject *add_key;
    PyObject *disabled_in;
    PyTypeObject *impression;
    int untrackable; /* its instances have no __dict__: only their items refer to others */
    PyObject *made;
    PyObject *zero;
    Tally tally;
    Py_ssize_t emitted;
    Py_ssize_t deduplicated;
    /* the current request's snapshot, and what it gives (cached while it repeats) */
    PyObject *snap;
    PyObject *version;
    PyObject *disabled; /* NULL: no flag of the snapshot has impressions disabled */
    Remembered last_flag;
} Run;

static int
type_error(const char *what, PyObject *got)
{
    PyErr_Format(PyExc_TypeError, "%s, not %.100s", what, Py_TYPE(got)->tp_name);
    return -1;
}

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
    Py_INCREF(snap);
    Py_XSETREF(run->snap, snap);
    Py_XSETREF(run->version, version);
    Py_XSETREF(run->disabled, disabled);
    return 0;
}

/* Can hold no reference to anything: nothing reachable from it can lead back to it. */
static int
atomic(PyObject *value)
{
    return value == Py_None || PyUnicode_CheckExact(value) || PyLong_CheckExact(value) ||
           PyBool_Check(value);
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

/* One lookup: (key, bucketing key, flag, (treatment, label, config, change number)). */
static int
lookup(Run *run, State *state, PyObject *answer, PyObject *time_obj, long long time_ms,
       long long hour)
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
    if (change == Py_None) {
        change = run->zero; /* `change or 0` */
    }
    else {
        int nonzero = PyObject_IsTrue(change);
        if (nonzero < 0) {
            return -1;
        }
        if (!nonzero) {
            change = run->zero;
        }
    }
    /* hash((key, flag, treatment, label, change)), one item at a time: a str subclass's
     * __hash__ may raise, and no hash may be asked with an exception set */
    PyObject *const items[FIELDS] = {key, flag, treatment, label, change};
    Py_hash_t lanes[FIELDS];
    for (int i = 0; i < FIELDS; i++) {
        lanes[i] = i == 1 ? flag_hash : hash_of(items[i]);
        if (lanes[i] == -1) {
            return -1;
        }
    }
    Py_hash_t hash = tuple_hash(lanes);
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
    if (use_snapshot(run, PyTuple_GET_ITEM(item, 0), state->version_name) < 0) {
        return -1;
    }
    PyObject *lookups = PyTuple_GET_ITEM(item, 2);
    if (!PyList_Check(lookups) && !PyTuple_Check(lookups)) {
        return type_error("lookups must be a list or a tuple", lookups);
    }
    /* the size is read again every lookup: add_key runs Python code, which could shrink
     * the list, as the Python loop's `for` would see */
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(lookups); i++) {
        PyObject *answer = Py_NewRef(PySequence_Fast_GET_ITEM(lookups, i));
        int status = lookup(run, state, answer, time_obj, time_ms, hour);
        Py_DECREF(answer);
        if (status < 0) {
            return -1;
        }
    }
    return 0;
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
    run->add_key = Py_NewRef(args[4]);
    run->disabled_in = Py_NewRef(args[5]);
    run->impression = (PyTypeObject *)Py_NewRef(args[6]);
    run->untrackable = run->impression->tp_dictoffset == 0 && PyType_IS_GC(run->impression);
    run->made = Py_NewRef(args[7]);
    run->zero = PyLong_FromLong(0);
    return run->zero == NULL ? -1 : 0;
}

static void
finish(Run *run)
{
    Py_XDECREF((PyObject *)run->observer);
    Py_XDECREF(run->add_key);
    Py_XDECREF(run->disabled_in);
    Py_XDECREF((PyObject *)run->impression);
    Py_XDECREF(run->made);
    Py_XDECREF(run->zero);
    Py_XDECREF(run->snap);
    Py_XDECREF(run->version);
    Py_XDECREF(run->disabled);
    Py_XDECREF(run->last_flag.text);
}

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

typedef struct {
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
    Py_ssize_t size = b->size < 256 ? 256 : b->size;
    while (size < b->used + more) {
        if (size > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        size *= 2;
    }
    char *data = PyMem_Realloc(b->data, (size_t)size);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->size = size;
    return 0;
}

static Py_ssize_t
varint_size(uint64_t value)
{
    Py_ssize_t size = 1;
    while (value >= 0x80) {
        value >>= 7;
        size++;
    }
    return size;
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

/* Appends one impression as an entry of the repeated field `tag`. */
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
        string_field(items[2], 0, "flag", &fields[2]) < 0 ||
        string_field(items[3], 0, "treatment", &fields[3]) < 0 ||
        string_field(items[4], 1, "label", &fields[4]) < 0 ||
        int_field(items[5], 1, 0, "change_number", &fields[5]) < 0 ||
        int_field(items[6], 0, 0, "time_ms", &fields[6]) < 0 ||
        int_field(items[7], 1, 0, "previous_time_ms", &fields[7]) < 0 ||
        int_field(items[8], 1, 1, "snapshot_version", &fields[8]) < 0) {
        return -1;
    }
    Py_ssize_t length = 0;
    for (int i = 0; i < IMPRESSION_FIELDS; i++) {
        Field *f = &fields[i];
        if (f->present) {
            length += 1 + (f->text != NULL ? varint_size((uint64_t)f->length) + f->length
                                           : varint_size(f->number));
        }
    }
    if (buffer_reserve(b, varint_size(tag) + varint_size((uint64_t)length) + length) < 0) {
        return -1;
    }
    char *at = put_varint(b->data + b->used, tag);
    at = put_varint(at, (uint64_t)length);
    for (int i = 0; i < IMPRESSION_FIELDS; i++) {
        Field *f = &fields[i];
        if (!f->present) {
            continue;
        }
        uint64_t number = (uint64_t)i + 1;
        if (f->text != NULL) {
            at = put_varint(at, number << 3 | 2); /* length-delimited */
            at = put_varint(at, (uint64_t)f->length);
            memcpy(at, f->text, (size_t)f->length);
            at += f->length;
        }
        else {
            at = put_varint(at, number << 3); /* varint */
            at = put_varint(at, f->number);
        }
    }
    b->used = at - b->data;
    return 0;
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
    Py_ssize_t field_number = PyLong_Check(args[1]) ? PyLong_AsSsize_t(args[1]) : -1;
    if (field_number == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (field_number < 1 || field_number > 536870911) {
        PyErr_SetString(PyExc_ValueError, "field_number must be an int in 1..2**29-1");
        return NULL;
    }
    uint64_t tag = (uint64_t)field_number << 3 | 2;
    Buffer b = {NULL, 0, 0};
    PyObject *list = args[0];
    /* an odd value's __bool__ is Python code, which could change the list: its size is read
     * again every time, and the impression being encoded is held */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *impression = Py_NewRef(PyList_GET_ITEM(list, i));
        int status = encode_one(&b, tag, impression);
        Py_DECREF(impression);
        if (status < 0) {
            PyMem_Free(b.data);
            return NULL;
        }
    }
    PyObject *bytes = PyBytes_FromStringAndSize(b.data == NULL ? "" : b.data, b.used);
    PyMem_Free(b.data);
    return bytes;
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
    int status = start(&run, state, args);
    PyObject *requests = status < 0 ? NULL : PyObject_GetIter(args[0]);
    if (requests != NULL) {
        PyObject *item;
        while ((item = PyIter_Next(requests)) != NULL) {
            status = request(&run, state, item);
            Py_DECREF(item);
            if (status < 0) {
                break;
            }
        }
        Py_DECREF(requests);
    }
    int failed = PyErr_Occurred() != NULL;
    if (tally_merge(&run.tally, args[3]) < 0) {
        failed = 1;
    }
    PyObject *result = failed ? NULL : Py_BuildValue("(nn)", run.emitted, run.deduplicated);
    finish(&run);
    return result;
}

static PyMethodDef methods[] = {
    {"process_all", (PyCFunction)(void (*)(void))process_all, METH_FASTCALL, process_all_doc},
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
