/* fader._decide: an in-process lookup's common case in C (see fader._local.make_decide).
 *
 * Why native: an in-process get_treatment is the engine (~0.4 us) plus the sidecar's request
 * rules and the recording of the lookup, and in Python those cost about as much as the engine
 * itself (a loop over the attributes' types, the key's length and characters, a tuple and a
 * call for the record). Here they are a few type tests.
 *
 * Same answers as the Python rules it fronts, by construction: a lookup is settled here only
 * when every check the Python `decide` makes passes on values whose type leaves no doubt
 * (exact str, bool, float, int within 64 bits; an exact dict of attributes with str names);
 * anything else, and any lookup whose decision is NOT_FOUND, is handed whole to `slow`, the
 * Python `decide`, which refuses, converts or
 * answers it as before (evaluating again: a decision depends on its inputs only). So a
 * lookup raises nothing of this code's own (but MemoryError): errors come from `evaluate`,
 * `record` or `slow`.
 * tests/fader/test_decide.py compares both over random and hostile lookups. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

enum { MAX_KEY_LENGTH = 250 };

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *evaluate;  /* snapshot.evaluate(key, flag, bucketing_key, attributes) */
    PyObject *record;    /* called with (key, bucketing key, flag, decision), or None */
    PyObject *slow;      /* the Python decide, same arguments */
    PyObject *not_found; /* fader.rules.result.NOT_FOUND */
    Py_ssize_t max_size;
    Py_ssize_t max_attributes;
} Decide;

/* A key the sidecar takes as it is: 1 to 250 ASCII characters (ASCII also means protobuf
 * can carry it). */
static int
plain_key(PyObject *key)
{
    if (!PyUnicode_CheckExact(key)) {
        return 0;
    }
    Py_ssize_t length = PyUnicode_GET_LENGTH(key);
    return length > 0 && length <= MAX_KEY_LENGTH && PyUnicode_IS_ASCII(key);
}

/* Attributes the engine takes as they are: None, or an exact dict of at most
 * `max_attributes` non-empty str names whose values are exact strs of at most `max_size`
 * characters, bools, exact floats or exact ints within 64 bits. */
static int
plain_attributes(Decide *self, PyObject *attributes)
{
    if (attributes == Py_None) {
        return 1;
    }
    if (!PyDict_CheckExact(attributes)) {
        return 0;
    }
    if (PyDict_GET_SIZE(attributes) > self->max_attributes) {
        return 0;
    }
    Py_ssize_t position = 0;
    PyObject *name, *value;
    while (PyDict_Next(attributes, &position, &name, &value)) {
        if (!PyUnicode_CheckExact(name) || PyUnicode_GET_LENGTH(name) == 0) {
            return 0;
        }
        if (PyUnicode_CheckExact(value)) {
            if (PyUnicode_GET_LENGTH(value) > self->max_size) {
                return 0;
            }
        }
        else if (PyLong_CheckExact(value)) {
            int overflow;
            (void)PyLong_AsLongLongAndOverflow(value, &overflow); /* an exact int: no error */
            if (overflow) {
                return 0;
            }
        }
        else if (!PyBool_Check(value) && !PyFloat_CheckExact(value)) {
            return 0;
        }
    }
    return 1;
}

static PyObject *
decide_call(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Decide *self = (Decide *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 4 || kwnames != NULL) {
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    }
    PyObject *key = args[0], *flag = args[1], *bucketing_key = args[2], *attributes = args[3];
    if (!plain_key(key) || (bucketing_key != Py_None && !plain_key(bucketing_key)) ||
        !plain_attributes(self, attributes)) {
        return PyObject_Vectorcall(self->slow, args, nargs, NULL);
    }
    PyObject *decision = PyObject_Vectorcall(self->evaluate, args, nargs, NULL);
    if (decision == NULL) {
        return NULL;
    }
    if (decision == self->not_found) {
        Py_DECREF(decision);
        return PyObject_Vectorcall(self->slow, args, nargs, NULL);
    }
    if (self->record != Py_None) {
        PyObject *lookup = PyTuple_Pack(4, key, bucketing_key, flag, decision);
        if (lookup == NULL) {
            Py_DECREF(decision);
            return NULL;
        }
        PyObject *done = PyObject_CallOneArg(self->record, lookup);
        Py_DECREF(lookup);
        if (done == NULL) {
            Py_DECREF(decision);
            return NULL;
        }
        Py_DECREF(done);
    }
    return decision;
}

static PyObject *
decide_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {
        "evaluate", "record", "slow", "not_found", "max_size", "max_attributes", NULL,
    };
    PyObject *evaluate, *record, *slow, *not_found;
    Py_ssize_t max_size, max_attributes;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOnn", names, &evaluate, &record, &slow,
                                     &not_found, &max_size, &max_attributes)) {
        return NULL;
    }
    if (!PyCallable_Check(evaluate) || !PyCallable_Check(slow) ||
        (record != Py_None && !PyCallable_Check(record))) {
        PyErr_SetString(PyExc_TypeError, "evaluate, slow and record (or None) must be callable");
        return NULL;
    }
    Decide *self = (Decide *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = decide_call;
    self->evaluate = Py_NewRef(evaluate);
    self->record = Py_NewRef(record);
    self->slow = Py_NewRef(slow);
    self->not_found = Py_NewRef(not_found);
    self->max_size = max_size;
    self->max_attributes = max_attributes;
    return (PyObject *)self;
}

static int
decide_traverse(Decide *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->evaluate);
    Py_VISIT(self->record);
    Py_VISIT(self->slow);
    Py_VISIT(self->not_found);
    return 0;
}

static int
decide_clear(Decide *self)
{
    Py_CLEAR(self->evaluate);
    Py_CLEAR(self->record);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->not_found);
    return 0;
}

static void
decide_dealloc(Decide *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    decide_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMemberDef decide_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Decide, vectorcall), READONLY, NULL},
    {NULL},
};

PyDoc_STRVAR(decide_doc,
"Decide(evaluate, record, slow, not_found, max_size, max_attributes)\n"
"--\n\n"
"decide(key, flag, bucketing_key, attributes) -> Decision: `evaluate`'s decision for a\n"
"lookup the sidecar's rules take as it is, recorded with `record`; any other lookup is\n"
"`slow(key, flag, bucketing_key, attributes)`.");

static PyType_Slot decide_slots[] = {
    {Py_tp_new, decide_new},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_traverse, decide_traverse},
    {Py_tp_clear, decide_clear},
    {Py_tp_dealloc, decide_dealloc},
    {Py_tp_members, decide_members},
    {Py_tp_doc, (void *)decide_doc},
    {0, NULL},
};

static PyType_Spec decide_spec = {
    .name = "fader._decide.Decide",
    .basicsize = sizeof(Decide),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = decide_slots,
};

static int
exec_module(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &decide_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    int status = PyModule_AddObjectRef(module, "Decide", type);
    Py_DECREF(type);
    return status;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fader._decide",
    .m_doc = "An in-process lookup's common case in C (see fader._local.make_decide).",
    .m_size = 0,
    .m_slots = module_slots,
};

PyMODINIT_FUNC
PyInit__decide(void)
{
    return PyModuleDef_Init(&module_def);
}
