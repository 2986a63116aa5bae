/* sidecar.plumbing._batchwire: an EvaluateBatchRequest's bytes to the lookups of its items, in
 * one native pass.
 *
 * Why: reading 100 items through upb's Python objects (a wrapper per item, a str per field
 * access, a container for the attributes even when empty) cost ~0.6 M instructions a request,
 * more than gRPC's whole call (benchmarks/RESULTS.md, "EvaluateBatch against its floor").
 * Here each item becomes the lookup tuple the evaluator takes, with its attributes built from
 * the entries the Python side already admitted and remembered by their bytes.
 *
 * The wire rules are upb's for this message (as installed with protobuf, found and checked
 * by differential fuzzing), so that a request is accepted or refused exactly as upb parses it
 * with the attributes declared as bytes (the test's `WireBatchRequest`), with upb's reason:
 * varints of at most 10 bytes, tags and lengths of at most 5, tags of 32 bits, lengths below
 * 2^31 - 1 that fit what is left, field number 0 refused in a message (not inside an unknown
 * group), wire types 6 and 7 refused, a known field with another wire type skipped as
 * unknown, unknown groups matched with their end tag within a depth of 100 (the item counts
 * as one level), proto3 strings valid UTF-8 at every occurrence, the last occurrence of a
 * singular field wins. tests/plumbing/test_batchwire.py compares both on random, mutated and
 * truncated requests.
 *
 * The module also counts and encodes a request's answers (`tally`, `join_entries`, below),
 * and reads a client's RecordExposuresRequest under the same rules (`read_exposures`, at the
 * end). It sits in plumbing, below both of its users: the fader.v1 lane (sidecar.api.fader_v1
 * reads and encodes with it) and the evaluation metrics (sidecar.telemetry.metrics counts
 * with it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { WIRE_VARINT = 0, WIRE_I64 = 1, WIRE_LEN = 2, WIRE_SGROUP = 3, WIRE_EGROUP = 4, WIRE_I32 = 5 };

/* Outcomes of the readers below: a Python error is set only for FAILED. */
enum { READ_OK = 0, READ_FAILED = -1, READ_CORRUPT = 1, READ_BAD_UTF8 = 2 };

/* upb's default nesting limit for Python messages: the top-level message starts with it, and
 * each sub-message or group takes one level. */
#define MAX_DEPTH 100
/* Distinct flag names remembered per request, so that items naming the same flag share one
 * str (its hash is then computed once for the engine's lookups). */
#define FLAG_CACHE 16

static PyObject *WireError; /* ValueError subclass; its message is upb's reason */
static PyObject *EmptyString;

typedef struct {
    const uint8_t *data;
    Py_ssize_t size;
    PyObject *name; /* owned */
} CachedFlag;

typedef struct {
    PyObject *known; /* dict: entry bytes -> (name, value) */
    Py_ssize_t max_key, max_name, max_attributes;
    /* Items past max_items are read (the request must still decode) and counted, not kept:
     * a 4 MiB request of 2 M empty items otherwise held 2 M lookups (~230 MB) only to be
     * refused for their number. */
    Py_ssize_t max_items, items;
    CachedFlag flags[FLAG_CACHE];
    int flag_count;
} Reader;

/* A varint of at most `max_bytes` bytes; bits past 64 are dropped, as upb does. */
static int read_varint(const uint8_t **pos, const uint8_t *end, uint64_t *out, int max_bytes) {
    const uint8_t *p = *pos;
    uint64_t value = 0;
    for (int i = 0; i < max_bytes; i++) {
        if (p >= end) {
            return READ_CORRUPT;
        }
        uint8_t byte = *p++;
        value |= (uint64_t)(byte & 0x7F) << (7 * i);
        if (!(byte & 0x80)) {
            *pos = p;
            *out = value;
            return READ_OK;
        }
    }
    return READ_CORRUPT;
}

static int read_tag(const uint8_t **pos, const uint8_t *end, uint32_t *tag) {
    uint64_t value;
    if (read_varint(pos, end, &value, 5) != READ_OK || value > UINT32_MAX) {
        return READ_CORRUPT;
    }
    *tag = (uint32_t)value;
    return READ_OK;
}

/* A length prefix: at most 5 bytes, below 2^31 - 1, and within `end`. */
static int read_length(const uint8_t **pos, const uint8_t *end, Py_ssize_t *length) {
    uint64_t value;
    if (read_varint(pos, end, &value, 5) != READ_OK || value >= INT32_MAX ||
        value > (uint64_t)(end - *pos)) {
        return READ_CORRUPT;
    }
    *length = (Py_ssize_t)value;
    return READ_OK;
}

static int skip_group(const uint8_t **pos, const uint8_t *end, uint32_t number, int depth);

/* Skips the value of an unknown field (or a known one with an unexpected wire type). Field
 * number 0 is refused in a message (`skip_unknown`), not inside an unknown group: upb skips
 * a group's contents without looking at their numbers. */
static int skip_field(const uint8_t **pos, const uint8_t *end, uint32_t tag, int depth) {
    uint64_t ignored;
    Py_ssize_t length;
    switch (tag & 7) {
    case WIRE_VARINT:
        return read_varint(pos, end, &ignored, 10);
    case WIRE_I64:
        length = 8;
        break;
    case WIRE_I32:
        length = 4;
        break;
    case WIRE_LEN:
        if (read_length(pos, end, &length) != READ_OK) {
            return READ_CORRUPT;
        }
        break;
    case WIRE_SGROUP:
        return skip_group(pos, end, tag >> 3, depth);
    default: /* an end-group tag outside its group, wire types 6 and 7 */
        return READ_CORRUPT;
    }
    if (length > end - *pos) {
        return READ_CORRUPT;
    }
    *pos += length;
    return READ_OK;
}

/* An unknown group's fields up to its end tag, which must carry the same number. */
static int skip_group(const uint8_t **pos, const uint8_t *end, uint32_t number, int depth) {
    if (*pos >= end || --depth < 0) {
        return READ_CORRUPT;
    }
    while (*pos < end) {
        uint32_t tag;
        if (read_tag(pos, end, &tag) != READ_OK) {
            return READ_CORRUPT;
        }
        if ((tag & 7) == WIRE_EGROUP) {
            return (tag >> 3) == number ? READ_OK : READ_CORRUPT;
        }
        int status = skip_field(pos, end, tag, depth);
        if (status != READ_OK) {
            return status;
        }
    }
    return READ_CORRUPT; /* the group never ended */
}

/* An unknown field of a message (the request or an item). */
static int skip_unknown(const uint8_t **pos, const uint8_t *end, uint32_t tag, int depth) {
    return tag >> 3 == 0 ? READ_CORRUPT : skip_field(pos, end, tag, depth);
}

/* A proto3 string field as a new str; bad UTF-8 is the request's fault, not an error. Keys
 * and names are mostly ASCII: copied straight into a compact str, which costs half of
 * going through the UTF-8 decoder. */
static int read_string(const uint8_t *data, Py_ssize_t size, PyObject **out) {
    uint8_t high = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        high |= data[i];
    }
    PyObject *text;
    if (high < 0x80) {
        text = PyUnicode_New(size, 127);
        if (text == NULL) {
            return READ_FAILED;
        }
        memcpy(PyUnicode_1BYTE_DATA(text), data, (size_t)size);
    } else {
        text = PyUnicode_DecodeUTF8((const char *)data, size, "strict");
    }
    if (text == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            return READ_BAD_UTF8;
        }
        return READ_FAILED;
    }
    Py_XSETREF(*out, text);
    return READ_OK;
}

/* The flag's str, shared with earlier items of the request that name the same flag. */
static int read_flag(Reader *reader, const uint8_t *data, Py_ssize_t size, PyObject **out) {
    for (int i = 0; i < reader->flag_count; i++) {
        CachedFlag *cached = &reader->flags[i];
        if (cached->size == size && memcmp(cached->data, data, (size_t)size) == 0) {
            Py_INCREF(cached->name);
            Py_XSETREF(*out, cached->name);
            return READ_OK;
        }
    }
    int status = read_string(data, size, out);
    if (status == READ_OK && reader->flag_count < FLAG_CACHE) {
        CachedFlag *cached = &reader->flags[reader->flag_count++];
        cached->data = data;
        cached->size = size;
        Py_INCREF(*out);
        cached->name = *out;
    }
    return status;
}

typedef struct {
    PyObject *key, *flag, *bucketing_key; /* owned, NULL until the field is seen */
    PyObject *entries;                    /* owned list of entry bytes, NULL when none */
} Item;

static void item_clear(Item *item) {
    Py_CLEAR(item->key);
    Py_CLEAR(item->flag);
    Py_CLEAR(item->bucketing_key);
    Py_CLEAR(item->entries);
}

static int add_entry(Item *item, const uint8_t *data, Py_ssize_t size) {
    if (item->entries == NULL && (item->entries = PyList_New(0)) == NULL) {
        return READ_FAILED;
    }
    PyObject *entry = PyBytes_FromStringAndSize((const char *)data, size);
    if (entry == NULL) {
        return READ_FAILED;
    }
    int failed = PyList_Append(item->entries, entry);
    Py_DECREF(entry);
    return failed ? READ_FAILED : READ_OK;
}

/* BatchItem: key = 1, flag = 2, bucketing_key = 3 (strings), attributes = 4 (map entries,
 * kept as their bytes), within [p, end) of a request ending at `data_end`.
 *
 * upb reads a string field's tag, length and bytes from the whole buffer and only then
 * finds the item overrun (refused as corrupt), so a string running past its item is refused
 * for bad UTF-8 if its bytes are not UTF-8: the string reads here are bounded by `data_end`,
 * and an overrun is refused at the next field, as upb does. Every other field is refused as
 * soon as it runs past the item, which gives the same answer (nothing of it is checked). */
static int read_item(Reader *reader, const uint8_t *p, const uint8_t *end,
                     const uint8_t *data_end, int depth, Item *item) {
    while (p < end) {
        uint32_t tag;
        Py_ssize_t size;
        int status;
        if (read_tag(&p, data_end, &tag) != READ_OK) {
            return READ_CORRUPT;
        }
        uint32_t number = tag >> 3;
        if ((tag & 7) != WIRE_LEN || number < 1 || number > 4) {
            status = p > end ? READ_CORRUPT : skip_unknown(&p, end, tag, depth);
        } else if (read_length(&p, number == 4 ? end : data_end, &size) != READ_OK) {
            return READ_CORRUPT;
        } else {
            switch (number) {
            case 1:
                status = read_string(p, size, &item->key);
                break;
            case 2:
                status = read_flag(reader, p, size, &item->flag);
                break;
            case 3:
                status = read_string(p, size, &item->bucketing_key);
                break;
            default:
                status = add_entry(item, p, size);
                break;
            }
            p += size;
        }
        if (status != READ_OK) {
            return status;
        }
    }
    return p == end ? READ_OK : READ_CORRUPT;
}

/* The item's attributes from remembered entries: a new dict, or NULL with *missing set when
 * an entry is not remembered (Python admits the item's entries then). */
static PyObject *known_attributes(Reader *reader, PyObject *entries, int *missing) {
    PyObject *attrs = PyDict_New();
    if (attrs == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(entries);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = PyDict_GetItemWithError(reader->known, PyList_GET_ITEM(entries, i));
        if (pair == NULL) {
            Py_DECREF(attrs);
            if (PyErr_Occurred()) {
                return NULL;
            }
            *missing = 1;
            return NULL;
        }
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(attrs);
            PyErr_SetString(PyExc_TypeError, "remembered entries must be (name, value) tuples");
            return NULL;
        }
        /* A name sent twice: the last entry wins, as in the map. */
        if (PyDict_SetItem(attrs, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)) < 0) {
            Py_DECREF(attrs);
            return NULL;
        }
    }
    return attrs;
}

/* The lookup tuple (key, bucketing key or None, flag, attributes) of a read item; *pending
 * is set when Python must look at it (a field over or under its limit, an entry not
 * remembered, too many attributes): its fourth member is then the entries as a tuple (or
 * None), for the checks that say what is wrong. */
static PyObject *lookup_of(Reader *reader, Item *item, int *pending) {
    PyObject *key = item->key != NULL ? item->key : EmptyString;
    PyObject *flag = item->flag != NULL ? item->flag : EmptyString;
    PyObject *bucketing_key = item->bucketing_key;
    if (bucketing_key != NULL && PyUnicode_GET_LENGTH(bucketing_key) == 0) {
        bucketing_key = NULL;
    }
    Py_ssize_t key_length = PyUnicode_GET_LENGTH(key);
    Py_ssize_t flag_length = PyUnicode_GET_LENGTH(flag);
    *pending = key_length == 0 || key_length > reader->max_key || flag_length == 0 ||
               flag_length > reader->max_name ||
               (bucketing_key != NULL && PyUnicode_GET_LENGTH(bucketing_key) > reader->max_key);
    PyObject *attrs;
    if (item->entries == NULL) {
        attrs = Py_NewRef(Py_None);
    } else {
        attrs = NULL;
        if (!*pending) {
            attrs = known_attributes(reader, item->entries, pending);
            if (attrs == NULL && PyErr_Occurred()) {
                return NULL;
            }
            if (attrs != NULL && PyDict_GET_SIZE(attrs) > reader->max_attributes) {
                Py_CLEAR(attrs);
                *pending = 1;
            }
        }
        if (attrs == NULL && (attrs = PyList_AsTuple(item->entries)) == NULL) {
            return NULL;
        }
    }
    PyObject *lookup = PyTuple_New(4);
    if (lookup == NULL) {
        Py_DECREF(attrs);
        return NULL;
    }
    PyTuple_SET_ITEM(lookup, 0, Py_NewRef(key));
    PyTuple_SET_ITEM(lookup, 1, Py_NewRef(bucketing_key != NULL ? bucketing_key : Py_None));
    PyTuple_SET_ITEM(lookup, 2, Py_NewRef(flag));
    PyTuple_SET_ITEM(lookup, 3, attrs);
    return lookup;
}

/* One item: read, then appended as a lookup (and its index to `pending` if it needs Python),
 * unless the request has more items than it may. */
static int add_item(Reader *reader, const uint8_t *p, const uint8_t *end,
                    const uint8_t *data_end, int depth, PyObject *lookups, PyObject *pending) {
    Item item = {NULL, NULL, NULL, NULL};
    int status = read_item(reader, p, end, data_end, depth, &item);
    if (status != READ_OK || ++reader->items > reader->max_items) {
        item_clear(&item);
        return status;
    }
    int needs_python = 0;
    PyObject *lookup = lookup_of(reader, &item, &needs_python);
    item_clear(&item);
    if (lookup == NULL) {
        return READ_FAILED;
    }
    int failed = PyList_Append(lookups, lookup);
    Py_DECREF(lookup);
    if (failed) {
        return READ_FAILED;
    }
    if (needs_python) {
        PyObject *index = PyLong_FromSsize_t(PyList_GET_SIZE(lookups) - 1);
        if (index == NULL) {
            return READ_FAILED;
        }
        failed = PyList_Append(pending, index);
        Py_DECREF(index);
        if (failed) {
            return READ_FAILED;
        }
    }
    return READ_OK;
}

/* EvaluateBatchRequest: items = 1, each a BatchItem. */
static int read_request(Reader *reader, const uint8_t *p, const uint8_t *end, PyObject *lookups,
                        PyObject *pending) {
    const int depth = MAX_DEPTH;
    while (p < end) {
        uint32_t tag;
        Py_ssize_t size;
        int status;
        if (read_tag(&p, end, &tag) != READ_OK) {
            return READ_CORRUPT;
        }
        if (tag == ((1 << 3) | WIRE_LEN)) {
            if (read_length(&p, end, &size) != READ_OK) {
                return READ_CORRUPT;
            }
            /* The item takes one level (depth - 1 >= 0 always holds at the top). */
            status = add_item(reader, p, p + size, end, depth - 1, lookups, pending);
            p += size;
        } else {
            status = skip_unknown(&p, end, tag, depth);
        }
        if (status != READ_OK) {
            return status;
        }
    }
    return READ_OK;
}

static int as_limit(PyObject *value, Py_ssize_t *out) {
    *out = PyLong_AsSsize_t(value);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *read_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "read_batch(data, known, max_key, max_name, max_attributes, max_items)");
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "read_batch takes bytes and a dict");
        return NULL;
    }
    Reader reader = {.known = args[1], .flag_count = 0};
    if (as_limit(args[2], &reader.max_key) < 0 || as_limit(args[3], &reader.max_name) < 0 ||
        as_limit(args[4], &reader.max_attributes) < 0 ||
        as_limit(args[5], &reader.max_items) < 0) {
        return NULL;
    }
    PyObject *lookups = PyList_New(0);
    PyObject *pending = PyList_New(0);
    PyObject *result = NULL;
    if (lookups != NULL && pending != NULL) {
        /* `data` is immutable and referenced by the caller for the whole call. */
        const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(args[0]);
        int status = read_request(&reader, p, p + PyBytes_GET_SIZE(args[0]), lookups, pending);
        if (status == READ_OK) {
            result = Py_BuildValue("(OOn)", lookups, pending, reader.items);
        } else if (status == READ_CORRUPT) {
            PyErr_SetString(WireError, "Wire format was corrupt");
        } else if (status == READ_BAD_UTF8) {
            PyErr_SetString(WireError, "String field had bad UTF-8");
        }
    }
    for (int i = 0; i < reader.flag_count; i++) {
        Py_DECREF(reader.flags[i].name);
    }
    Py_XDECREF(lookups);
    Py_XDECREF(pending);
    return result;
}

/* ---- answers: counting and encoding by (flag, decision) ----
 *
 * A request's answers name few distinct (flag, decision) pairs (decisions are built at
 * compile time, and the reader gives items naming one flag the same str), and hashing a
 * pair (a tuple of a str and a 4-field NamedTuple) cost ~1,800 instructions an answer for
 * counting and as much again for encoding. Here answers are grouped by the identity of
 * their flag and decision, and each group hashes its pair once. Groups only save work:
 * equal pairs that are not identical land in the same dict entry all the same. */

#define GROUPS 32

typedef struct {
    PyObject *flag, *decision; /* borrowed from the answers, alive for the call */
    Py_ssize_t count;
    PyObject *part; /* join_entries: the group's encoded entry, borrowed from `parts` */
} Group;

/* An answer's (flag, decision): members 2 and 3 of (key, bucketing key, flag, decision). */
static int answer_pair(PyObject *answer, PyObject **flag, PyObject **decision) {
    if (!PyTuple_Check(answer) || PyTuple_GET_SIZE(answer) != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "an answer is a (key, bucketing_key, flag, decision) tuple");
        return -1;
    }
    *flag = PyTuple_GET_ITEM(answer, 2);
    *decision = PyTuple_GET_ITEM(answer, 3);
    return 0;
}

/* The group of (flag, decision), a new one if there is room, or NULL when the table is full. */
static Group *group_of(Group *groups, int *used, PyObject *flag, PyObject *decision) {
    for (int i = 0; i < *used; i++) {
        if (groups[i].flag == flag && groups[i].decision == decision) {
            return &groups[i];
        }
    }
    if (*used == GROUPS) {
        return NULL;
    }
    Group *group = &groups[(*used)++];
    *group = (Group){flag, decision, 0, NULL};
    return group;
}

/* counts[(flag, decision)] += group count, for each group in first-occurrence order (the
 * order Counter.update would insert new pairs in). */
static int add_counts(PyObject *counts, Group *groups, int used) {
    for (int i = 0; i < used; i++) {
        PyObject *pair = PyTuple_Pack(2, groups[i].flag, groups[i].decision);
        if (pair == NULL) {
            return -1;
        }
        PyObject *old = PyDict_GetItemWithError(counts, pair);
        PyObject *total = NULL;
        if (old != NULL) {
            PyObject *more = PyLong_FromSsize_t(groups[i].count);
            if (more != NULL) {
                total = PyNumber_Add(old, more);
                Py_DECREF(more);
            }
        } else if (!PyErr_Occurred()) {
            total = PyLong_FromSsize_t(groups[i].count);
        }
        int failed = total == NULL || PyDict_SetItem(counts, pair, total) < 0;
        Py_XDECREF(total);
        Py_DECREF(pair);
        if (failed) {
            return -1;
        }
    }
    return 0;
}

static PyObject *tally(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "tally(counts: dict, answers)");
        return NULL;
    }
    /* A private copy: a key's hash may run Python code, which must not change the answers
     * under this loop. */
    PyObject *answers = PySequence_List(args[1]);
    if (answers == NULL) {
        return NULL;
    }
    Group groups[GROUPS];
    int used = 0, failed = 0;
    Py_ssize_t count = PyList_GET_SIZE(answers);
    for (Py_ssize_t i = 0; i < count && !failed; i++) {
        PyObject *flag, *decision;
        if (answer_pair(PyList_GET_ITEM(answers, i), &flag, &decision) < 0) {
            failed = 1;
            break;
        }
        Group *group = group_of(groups, &used, flag, decision);
        if (group == NULL) { /* full: count what is grouped, start again */
            failed = add_counts(args[0], groups, used) < 0;
            used = 0;
            group = group_of(groups, &used, flag, decision);
        }
        group->count++;
    }
    failed = failed || add_counts(args[0], groups, used) < 0;
    Py_DECREF(answers);
    if (failed) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The entry of a group: entries[(flag, decision)], or missing((flag, decision)) when it is
 * not there (which may change `entries`: nothing borrowed from it is kept). New reference. */
static PyObject *entry_of(PyObject *entries, PyObject *missing, Group *group) {
    PyObject *pair = PyTuple_Pack(2, group->flag, group->decision);
    if (pair == NULL) {
        return NULL;
    }
    PyObject *part = PyDict_GetItemWithError(entries, pair);
    if (part != NULL) {
        Py_INCREF(part);
    } else if (!PyErr_Occurred()) {
        part = PyObject_CallOneArg(missing, pair);
    }
    Py_DECREF(pair);
    if (part != NULL && !PyBytes_Check(part)) {
        Py_CLEAR(part);
        PyErr_SetString(PyExc_TypeError, "an encoded entry must be bytes");
    }
    return part;
}

/* The answers' encoded entries, joined: parts[i] holds answer i's (owned). */
static PyObject *join_parts(PyObject **parts, Py_ssize_t count) {
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        size += PyBytes_GET_SIZE(parts[i]);
    }
    PyObject *joined = PyBytes_FromStringAndSize(NULL, size);
    if (joined == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(joined);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t length = PyBytes_GET_SIZE(parts[i]);
        memcpy(out, PyBytes_AS_STRING(parts[i]), (size_t)length);
        out += length;
    }
    return joined;
}

static PyObject *join_entries(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3 || !PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "join_entries(entries: dict, answers, missing)");
        return NULL;
    }
    /* A private copy: `missing` (and a key's hash) may run Python code, which must not
     * change the answers under this loop. */
    PyObject *answers = PySequence_List(args[1]);
    if (answers == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(answers);
    PyObject **parts = PyMem_Calloc(count > 0 ? (size_t)count : 1, sizeof(PyObject *));
    PyObject *joined = NULL;
    if (parts == NULL) {
        Py_DECREF(answers);
        return PyErr_NoMemory();
    }
    Group groups[GROUPS];
    int used = 0;
    Py_ssize_t done = 0;
    for (; done < count; done++) {
        PyObject *flag, *decision;
        if (answer_pair(PyList_GET_ITEM(answers, done), &flag, &decision) < 0) {
            break;
        }
        Group *group = group_of(groups, &used, flag, decision);
        if (group == NULL) { /* full: the parts so far stay in `parts`, start again */
            used = 0;
            group = group_of(groups, &used, flag, decision);
        }
        if (group->part == NULL && (group->part = entry_of(args[0], args[2], group)) == NULL) {
            break;
        }
        parts[done] = Py_NewRef(group->part);
        if (group->count++ == 0) {
            Py_DECREF(group->part); /* `parts` holds the reference entry_of made */
        }
    }
    if (done == count) {
        joined = join_parts(parts, count);
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_XDECREF(parts[i]);
    }
    PyMem_Free(parts);
    Py_DECREF(answers);
    return joined;
}

/* ---- exposures: a client's RecordExposuresRequest, its impressions passed on as entries ----
 *
 * An in-process client sends the impressions it made as the repeated Impression field of a
 * RecordExposuresRequest. Read through upb's objects, made into tuples, checked field by
 * field in Python and encoded again, an impression cost the sidecar ~1.2 us, more than the
 * client's lookup; in debug mode a busy client then made more than the sidecar could take.
 * Here each impression is checked on its bytes and passed on as it came, under the upload's
 * field number. The wire rules are the reader's above (upb's): a request this refuses is one
 * upb refuses. The rest of the request (batch id, counts, unique keys: few) is handed back
 * as bytes for upb to parse. */

/* A string field's last occurrence, and its length in characters. */
typedef struct {
    const uint8_t *data;
    Py_ssize_t size, chars;
} Text;

typedef struct {
    Text key, bucketing_key, flag, treatment;
    int64_t time_ms;
} Impression;

/* A proto3 string's bytes checked as UTF-8 (READ_BAD_UTF8 if not); its characters counted. */
static int check_text(const uint8_t *data, Py_ssize_t size, Text *out) {
    uint8_t high = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        high |= data[i];
    }
    Py_ssize_t chars = size;
    if (high >= 0x80) { /* rare: the decoder is the judge of valid UTF-8, as in read_string */
        PyObject *text = PyUnicode_DecodeUTF8((const char *)data, size, "strict");
        if (text == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                PyErr_Clear();
                return READ_BAD_UTF8;
            }
            return READ_FAILED;
        }
        chars = PyUnicode_GET_LENGTH(text);
        Py_DECREF(text);
    }
    if (out != NULL) {
        *out = (Text){data, size, chars};
    }
    return READ_OK;
}

/* One Impression message's fields: the last occurrence of each wins, as in upb. */
static int read_impression(const uint8_t *p, const uint8_t *end, int depth, Impression *out) {
    *out = (Impression){.time_ms = 0};
    while (p < end) {
        uint32_t tag;
        if (read_tag(&p, end, &tag) != READ_OK) {
            return READ_CORRUPT;
        }
        uint32_t number = tag >> 3;
        int status;
        if (number >= 1 && number <= 5 && (tag & 7) == WIRE_LEN) {
            Py_ssize_t size;
            if (read_length(&p, end, &size) != READ_OK) {
                return READ_CORRUPT;
            }
            Text *fields[6] = {NULL, &out->key, &out->bucketing_key, &out->flag, &out->treatment,
                               NULL /* label: only checked */};
            status = check_text(p, size, fields[number]);
            p += size;
        } else if (number >= 6 && number <= 9 && (tag & 7) == WIRE_VARINT) {
            uint64_t value;
            status = read_varint(&p, end, &value, 10);
            if (status == READ_OK && number == 7) {
                out->time_ms = (int64_t)value;
            }
        } else {
            status = skip_unknown(&p, end, tag, depth);
        }
        if (status != READ_OK) {
            return status;
        }
    }
    return READ_OK;
}

/* What check_batch said of the first impression it refused, or NULL (and no error) when
 * this one is fine; the same checks, in the same order, with the same words. */
static PyObject *impression_problem(const Impression *imp, Py_ssize_t index, Py_ssize_t max_key,
                                    Py_ssize_t max_name) {
    const struct {
        const Text *text;
        const char *name;
        Py_ssize_t max;
        int optional;
    } named[3] = {
        {&imp->key, "key", max_key, 0},
        {&imp->bucketing_key, "bucketing_key", max_key, 1},
        {&imp->flag, "flag", max_name, 0},
    };
    for (int i = 0; i < 3; i++) {
        Py_ssize_t chars = named[i].text->chars;
        if (chars == 0 && !named[i].optional) {
            return PyUnicode_FromFormat("impressions[%zd].%s: must not be empty", index,
                                        named[i].name);
        }
        if (chars > named[i].max) {
            return PyUnicode_FromFormat("impressions[%zd].%s: %zd characters, at most %zd allowed",
                                        index, named[i].name, chars, named[i].max);
        }
    }
    if (imp->treatment.size == 0) {
        return PyUnicode_FromFormat("impressions[%zd].treatment: must not be empty", index);
    }
    if (imp->time_ms <= 0) {
        return PyUnicode_FromFormat("impressions[%zd].time_ms: must be positive", index);
    }
    return NULL;
}

static Py_ssize_t put_varint(uint8_t *at, uint64_t value) {
    Py_ssize_t n = 0;
    while (value >= 0x80) {
        at[n++] = (uint8_t)(value | 0x80);
        value >>= 7;
    }
    at[n++] = (uint8_t)value;
    return n;
}

typedef struct {
    uint32_t from_number;
    uint8_t to_tag[5];
    Py_ssize_t to_tag_size;
    Py_ssize_t max_key, max_name;
    uint8_t *entries, *rest; /* written into, each at least as large as needed */
    Py_ssize_t entries_used, rest_used, count;
    PyObject *problem; /* owned, NULL until an impression is refused */
} Exposures;

static int read_exposures_request(Exposures *x, const uint8_t *p, const uint8_t *end) {
    const int depth = MAX_DEPTH;
    while (p < end) {
        const uint8_t *field = p;
        uint32_t tag;
        int status;
        if (read_tag(&p, end, &tag) != READ_OK) {
            return READ_CORRUPT;
        }
        if (tag == ((x->from_number << 3) | WIRE_LEN)) {
            Py_ssize_t size;
            if (read_length(&p, end, &size) != READ_OK) {
                return READ_CORRUPT;
            }
            Impression imp;
            status = read_impression(p, p + size, depth - 1, &imp);
            if (status != READ_OK) {
                return status;
            }
            if (x->problem == NULL) {
                x->problem = impression_problem(&imp, x->count, x->max_key, x->max_name);
                if (x->problem == NULL && PyErr_Occurred()) {
                    return READ_FAILED;
                }
            }
            uint8_t *out = x->entries + x->entries_used;
            memcpy(out, x->to_tag, (size_t)x->to_tag_size);
            out += x->to_tag_size;
            out += put_varint(out, (uint64_t)size);
            memcpy(out, p, (size_t)size);
            x->entries_used = out + size - x->entries;
            x->count++;
            p += size;
        } else {
            status = skip_unknown(&p, end, tag, depth);
            if (status != READ_OK) {
                return status;
            }
            memcpy(x->rest + x->rest_used, field, (size_t)(p - field));
            x->rest_used += p - field;
        }
    }
    return READ_OK;
}

static PyObject *read_exposures(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    Py_ssize_t from_field, to_field;
    Exposures x = {.problem = NULL};
    if (nargs != 5 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "read_exposures(data: bytes, from_field, to_field, max_key, max_name)");
        return NULL;
    }
    if (as_limit(args[1], &from_field) < 0 || as_limit(args[2], &to_field) < 0 ||
        as_limit(args[3], &x.max_key) < 0 || as_limit(args[4], &x.max_name) < 0) {
        return NULL;
    }
    if (from_field < 1 || from_field > 15 || to_field < 1 || to_field > 15) {
        /* one-byte tags: an entry is never longer under its new number */
        PyErr_SetString(PyExc_ValueError, "field numbers must be 1 to 15");
        return NULL;
    }
    x.from_number = (uint32_t)from_field;
    x.to_tag[0] = (uint8_t)((to_field << 3) | WIRE_LEN);
    x.to_tag_size = 1;
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    PyObject *entries = PyBytes_FromStringAndSize(NULL, size);
    PyObject *rest = PyBytes_FromStringAndSize(NULL, size);
    PyObject *result = NULL;
    if (entries != NULL && rest != NULL) {
        x.entries = (uint8_t *)PyBytes_AS_STRING(entries);
        x.rest = (uint8_t *)PyBytes_AS_STRING(rest);
        const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(args[0]);
        int status = read_exposures_request(&x, p, p + size);
        if (status == READ_OK) {
            if (_PyBytes_Resize(&entries, x.entries_used) == 0 &&
                _PyBytes_Resize(&rest, x.rest_used) == 0) {
                result = Py_BuildValue("(OnOO)", entries, x.count,
                                       x.problem != NULL ? x.problem : Py_None, rest);
            }
        } else if (status == READ_CORRUPT) {
            PyErr_SetString(WireError, "Wire format was corrupt");
        } else if (status == READ_BAD_UTF8) {
            PyErr_SetString(WireError, "String field had bad UTF-8");
        }
    }
    Py_XDECREF(entries);
    Py_XDECREF(rest);
    Py_XDECREF(x.problem);
    return result;
}

static PyMethodDef methods[] = {
    {"read_batch", (PyCFunction)(void (*)(void))read_batch, METH_FASTCALL,
     "read_batch(data, known, max_key, max_name, max_attributes, max_items)\n"
     "    -> (lookups, pending, items)\n\n"
     "The lookups of an EvaluateBatchRequest's items; `pending` lists the items Python must\n"
     "check (their attributes are then their entries' bytes); `items` counts them all, and\n"
     "only the first `max_items` are kept. Raises WireError, with upb's reason, for bytes\n"
     "that are not such a request."},
    {"tally", (PyCFunction)(void (*)(void))tally, METH_FASTCALL,
     "tally(counts, answers) -> None\n\n"
     "counts[(flag, decision)] += 1 for each (key, bucketing_key, flag, decision) answer."},
    {"join_entries", (PyCFunction)(void (*)(void))join_entries, METH_FASTCALL,
     "join_entries(entries, answers, missing) -> bytes\n\n"
     "entries[(flag, decision)] of every answer, joined; missing((flag, decision)) gives\n"
     "(and remembers) the entry of a pair that is not there."},
    {"read_exposures", (PyCFunction)(void (*)(void))read_exposures, METH_FASTCALL,
     "read_exposures(data, from_field, to_field, max_key, max_name)\n"
     "    -> (entries, count, problem, rest)\n\n"
     "A RecordExposuresRequest's impressions (field `from_field`) as entries of field\n"
     "`to_field`, as they came; `problem` says what is wrong with the first impression the\n"
     "sidecar refuses (None: none is); `rest` is the request's other fields' bytes. Raises\n"
     "WireError, with upb's reason, for bytes that are not such a request."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sidecar.plumbing._batchwire",
    .m_doc = "EvaluateBatchRequest bytes to lookups, and RecordExposuresRequest bytes to "
             "impression entries, in one native pass.",
    .m_size = -1, /* module state lives in the two statics above */
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__batchwire(void) {
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    WireError = PyErr_NewExceptionWithDoc(
        "sidecar.plumbing._batchwire.WireError",
        "The bytes are not the request they were read as; the message is upb's reason.",
        PyExc_ValueError, NULL);
    EmptyString = PyUnicode_FromStringAndSize("", 0);
    if (WireError == NULL || EmptyString == NULL ||
        PyModule_AddObjectRef(module, "WireError", WireError) < 0) {
        Py_CLEAR(WireError);
        Py_CLEAR(EmptyString);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
