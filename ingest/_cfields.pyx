# cython: language_level=3
"""Compiled reader of one parsed ``PubmedArticle`` (optional; see :mod:`ingest.fields`).

The same rules as ``ingest.fields._article``, line for line, but walking libxml2's nodes
in C instead of creating an lxml proxy object for every child, tag and text. It is an
accelerator only: :class:`ArticleReader.read` returns ``None`` wherever it is not sure to
give the pure-Python result (it meets a node that is not an element, text or CDATA, or
an element in a namespace; the document has a DTD; the Python code would quarantine the
record), and the caller then reads the element with the Python code.
``tests/ingest/test_cfields.py`` checks that both give identical records.

Built by ``pip install -e .`` (setup.py) when Cython and a C compiler are at hand;
without it ``ingest.fields`` uses the pure-Python reader alone.
"""

from cpython.bytes cimport PyBytes_FromString
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport strcmp, strlen

from lxml.includes cimport tree
from lxml.includes.etreepublic cimport _Element, import_lxml__etree
from lxml.includes.tree cimport xmlAttr, xmlNode

import_lxml__etree()

cdef enum:
    ELEMENT = tree.XML_ELEMENT_NODE
    TEXT = tree.XML_TEXT_NODE
    CDATA = tree.XML_CDATA_SECTION_NODE

_WORD_MARKUP = frozenset({"i", "b", "u", "em", "strong", "italic", "bold"})


cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset

    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member

# structmember.h's T_OBJECT_EX: the kind of member a __slots__ entry is
cdef enum:
    T_OBJECT_EX = 16

import dataclasses
import types

from litpulse.core.states import RETRACTED_TYPE


class _Bail(Exception):
    """Not a record this reader is sure about: the Python reader takes it."""


# --------------------------------------------------------------------------- node helpers


cdef inline bint _is(xmlNode* c, const char* name) noexcept:
    return strcmp(<const char*>c.name, name) == 0


cdef inline xmlNode* _elem(xmlNode* c) except? NULL:
    """``c`` or the first element after it among its siblings (NULL if none). What lxml
    would see differently bails out: an element in a namespace (its tag is ``{uri}name``)
    or a node that is not an element, text or CDATA (a comment, an entity reference...)."""
    while c is not NULL:
        if c.type == ELEMENT:
            if c.ns is not NULL:
                raise _Bail()
            return c
        if c.type != TEXT and c.type != CDATA:
            raise _Bail()
        c = c.next
    return NULL


cdef inline str _u(const char* s):
    return PyUnicode_DecodeUTF8(s, strlen(s), NULL)


cdef object _collect(xmlNode* c):
    """lxml's ``_collectText``: the run of text/CDATA nodes from ``c`` (``.text`` of the
    parent or ``.tail`` of the previous sibling); None without one, '' if all empty."""
    cdef xmlNode* start = c
    cdef const char* found = NULL
    cdef int n = 0
    while c is not NULL and (c.type == TEXT or c.type == CDATA):
        if c.content is not NULL and c.content[0] != 0:
            found = <const char*>c.content
        n += 1
        c = c.next
    if found is NULL:
        return "" if n else None
    if n == 1:
        return _u(found)
    parts = []
    c = start
    while c is not NULL and (c.type == TEXT or c.type == CDATA):
        if c.content is not NULL:
            parts.append(PyBytes_FromString(<const char*>c.content))
        c = c.next
    return b"".join(parts).decode("utf-8")


cdef inline object _text(xmlNode* node):
    return _collect(node.children)


cdef str _all_text(xmlNode* node):
    """Every text/CDATA node below ``node``, in document order (``"".join(itertext())``)."""
    parts = []
    _gather(node.children, parts)
    return b"".join(parts).decode("utf-8")


cdef void _gather(xmlNode* c, list parts) except *:
    while c is not NULL:
        if c.type == ELEMENT:
            _gather(c.children, parts)
        elif c.type != TEXT and c.type != CDATA:
            raise _Bail()
        elif c.content is not NULL:
            parts.append(PyBytes_FromString(<const char*>c.content))
        c = c.next


cdef object _get(xmlNode* node, const char* name, default=None):
    """``elem.get(name, default)`` for an attribute in no namespace."""
    cdef xmlAttr* a = node.properties
    cdef xmlNode* c
    while a is not NULL:
        if a.ns is NULL and strcmp(<const char*>a.name, name) == 0:
            c = a.children
            if c is NULL:
                return ""
            if c.next is NULL:
                return _u(<const char*>c.content) if c.content is not NULL else ""
            parts = []
            while c is not NULL:
                if c.type != TEXT or c.content is NULL:
                    raise _Bail()
                parts.append(PyBytes_FromString(<const char*>c.content))
                c = c.next
            return b"".join(parts).decode("utf-8")
        a = a.next
    return default


cdef inline bint _clean(const unsigned char* s) noexcept:
    """True if ``fields._squeeze`` leaves this UTF-8 text as it is: no blank runs, tabs or
    line breaks, and printable ASCII (not whitespace) at both ends."""
    cdef Py_ssize_t i = 0
    if not (0x21 <= s[0] <= 0x7E):
        return False
    while s[i] != 0:
        if s[i] == 10 or s[i] == 9 or s[i] == 13 or (s[i] == 32 and s[i + 1] == 32):
            return False
        i += 1
    return 0x21 <= s[i - 1] <= 0x7E


# --------------------------------------------------------------------------- records


cdef class _Maker:
    """Builds instances of a frozen, slotted dataclass from its field values in order,
    writing the slots as their member descriptors do, without the frozen ``__init__``'s
    ``object.__setattr__`` per field (most of the cost of a Record)."""

    cdef object cls
    cdef Py_ssize_t n
    cdef Py_ssize_t offsets[40]

    def __init__(self, cls, tuple names):
        fields = tuple(f.name for f in dataclasses.fields(cls))
        if fields != names:
            raise TypeError(f"{cls.__name__} fields changed: {fields}")
        if len(names) > 40 or "__post_init__" in dir(cls) or "__slots__" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} is not a plain slotted dataclass")
        for i, name in enumerate(names):
            desc = cls.__dict__[name]
            if type(desc) is not types.MemberDescriptorType:
                raise TypeError(f"{cls.__name__}.{name} is not a slot")
            if (<PyMemberDescrObject*>desc).d_member.type != T_OBJECT_EX:
                raise TypeError(f"{cls.__name__}.{name} is not an object slot")
            self.offsets[i] = (<PyMemberDescrObject*>desc).d_member.offset
        self.cls = cls
        self.n = len(names)

    cdef object make(self, tuple values):
        cdef Py_ssize_t i
        cdef PyObject** slot
        cdef object v
        if len(values) != self.n:
            raise ValueError("wrong number of fields")
        obj = object.__new__(self.cls)
        for i in range(self.n):
            v = values[i]
            slot = <PyObject**>((<char*><PyObject*>obj) + self.offsets[i])
            Py_INCREF(v)
            Py_XDECREF(slot[0])
            slot[0] = <PyObject*>v
        return obj


_RECORD_FIELDS = (
    "pmid", "version", "title", "source", "abstract_sections", "vernacular_title",
    "journal", "journal_iso", "volume", "issue", "pages", "pub_date", "article_date",
    "entrez_date", "pubmed_date", "date_completed", "date_revised", "authors", "mesh",
    "keywords", "publication_types", "languages", "doi", "pmcid", "references",
    "is_retracted", "retraction_in", "is_book", "status",
)
_AUTHOR_FIELDS = (
    "last_name", "fore_name", "initials", "collective_name", "affiliations", "orcid"
)
_SECTION_FIELDS = ("text", "label", "category")


cdef inline object _squeeze(str text):
    # fields._squeeze, inlined
    if "  " in text or "\n" in text or "\t" in text or "\r" in text:
        return " ".join(text.split())
    return text.strip()


# --------------------------------------------------------------------------- the reader


cdef class ArticleReader:
    """Reads ``PubmedArticle`` elements; built once with the :mod:`ingest.fields` and
    :mod:`ingest.dates` modules (their helpers and record types are used as they are)."""

    cdef _Maker Record, Author, AbstractSection
    cdef object MeshHeading
    cdef object id_value, clean_doi, clean_orcid, pub_date_of, ymd_of, markup_spaces
    cdef dict mesh_cache
    cdef Py_ssize_t mesh_cache_size
    cdef object max_pmid, max_version, no_date

    def __init__(self, fields, dates):
        self.Record = _Maker(fields.Record, _RECORD_FIELDS)
        self.Author = _Maker(fields.Author, _AUTHOR_FIELDS)
        self.AbstractSection = _Maker(fields.AbstractSection, _SECTION_FIELDS)
        self.MeshHeading = fields.MeshHeading
        self.id_value = fields.id_value
        self.clean_doi = fields._clean_doi
        self.clean_orcid = fields._clean_orcid
        self.markup_spaces = fields._markup_spaces
        self.pub_date_of = dates.pub_date_of
        self.ymd_of = dates.ymd_of
        self.mesh_cache = fields._MESH_CACHE
        self.mesh_cache_size = fields._MESH_CACHE_SIZE
        self.max_pmid = fields.MAX_PMID
        self.max_version = fields.MAX_VERSION
        self.no_date = fields._NO_DATE

    def read(self, _Element elem, ref):
        """The Record of a ``PubmedArticle`` element, or None (the Python reader's turn)."""
        cdef xmlNode* node = elem._c_node
        if node is NULL or node.doc is NULL or node.ns is not NULL:
            return None
        if node.doc.intSubset is not NULL or node.doc.extSubset is not NULL:
            return None  # attribute defaults of a DTD would count for lxml's .get
        try:
            return self._article(node, ref)
        except _Bail:
            return None

    # -- text

    cdef str _flatten(self, xmlNode* node):
        cdef xmlNode* c = _elem(node.children)
        if c is NULL:
            c = node.children
            if (
                c is not NULL and c.next is NULL and c.type == TEXT and c.content is not NULL
                and _clean(<const unsigned char*>c.content)
            ):
                return _u(<const char*>c.content)  # one clean text node: as it is
            text = _text(node)
            if not text:
                return ""
        else:
            text = self._flatten_children(node)
        return _squeeze(text)

    cdef str _flatten_children(self, xmlNode* node):
        head = _text(node)
        cdef list parts = [head] if head else []
        cdef xmlNode* child = _elem(node.children)
        while child is not NULL:
            inner = _all_text(child)
            tail = _collect(child.next)
            if inner and _u(<const char*>child.name) in _WORD_MARKUP:
                # the Python reader's rule (fields._markup_spaces), called as it is
                space_before, space_after = self.markup_spaces(
                    parts[-1] if parts else "", inner, tail or "")
                if space_before:
                    parts.append(" ")
                parts.append(inner)
                if space_after:
                    parts.append(" ")
            elif inner:
                parts.append(inner)
            if tail:
                parts.append(tail)
            child = _elem(child.next)
        return "".join(parts)

    # -- dates

    cdef object _ymd(self, xmlNode* el):
        y = m = d = None
        cdef xmlNode* c = _elem(el.children)
        while c is not NULL:
            if _is(c, b"Year"):
                y = _text(c)
            elif _is(c, b"Month"):
                m = _text(c)
            elif _is(c, b"Day"):
                d = _text(c)
                break
            c = _elem(c.next)
        return self.ymd_of(y, m, d)

    cdef object _pub_date(self, xmlNode* pd):
        year_t = month_t = day_t = season_t = medline = None
        cdef xmlNode* c = _elem(pd.children)
        while c is not NULL:
            if _is(c, b"Year"):
                year_t = _text(c)
            elif _is(c, b"Month"):
                month_t = _text(c)
            elif _is(c, b"Day"):
                day_t = _text(c)
            elif _is(c, b"Season"):
                season_t = _text(c)
            elif _is(c, b"MedlineDate"):
                medline = _text(c) or ""
            c = _elem(c.next)
        return self.pub_date_of(year_t, month_t, day_t, season_t, medline)

    # -- identifiers

    cdef object _id(self, xmlNode* node, high):
        """``id_value(node.text, high)``; 1..10 ASCII digits in one text node read in C."""
        cdef xmlNode* c = node.children
        cdef const unsigned char* s
        cdef long long v = 0
        cdef int n = 0
        if (
            c is not NULL and c.type == TEXT and c.content is not NULL
            and (c.next is NULL or (c.next.type != TEXT and c.next.type != CDATA))
        ):
            s = <const unsigned char*>c.content
            while n < 11 and 48 <= s[n] <= 57:
                v = v * 10 + (s[n] - 48)
                n += 1
            if s[n] == 0 and 1 <= n <= 10:
                return v if 1 <= v <= high else None
        return self.id_value(_text(node), high)

    cdef void _append_pmids(self, xmlNode* cc, list out) except *:
        cdef xmlNode* p = _elem(cc.children)
        while p is not NULL:
            if _is(p, b"PMID"):
                pmid = self._id(p, self.max_pmid)
                if pmid is not None:
                    out.append(pmid)
            p = _elem(p.next)

    cdef void _reference_pmids(self, xmlNode* node, list out) except *:
        # elem.iter("ArticleId") below a ReferenceList, in document order
        cdef xmlNode* c = _elem(node.children)
        while c is not NULL:
            if _is(c, b"ArticleId"):
                if _get(c, b"IdType") == "pubmed":
                    pmid = self._id(c, self.max_pmid)
                    if pmid is not None:
                        out.append(pmid)
            self._reference_pmids(c, out)
            c = _elem(c.next)

    # -- lists

    cdef tuple _abstract(self, xmlNode* abstract):
        sections = []
        cdef xmlNode* at = _elem(abstract.children)
        while at is not NULL:
            if _is(at, b"AbstractText"):
                text = self._flatten(at)
                label = _get(at, b"Label")
                if text or label:
                    sections.append(
                        self.AbstractSection.make((text, label or None, _get(at, b"NlmCategory")))
                    )
            at = _elem(at.next)
        return tuple(sections)

    cdef tuple _authors(self, xmlNode* author_list):
        out = []
        cdef xmlNode* a = _elem(author_list.children)
        cdef xmlNode* c
        cdef xmlNode* af
        while a is not NULL:
            if not _is(a, b"Author") or _get(a, b"ValidYN") == "N":
                a = _elem(a.next)
                continue
            last = fore = initials = collective = orcid = None
            affs = []
            c = _elem(a.children)
            while c is not NULL:
                if _is(c, b"LastName"):
                    last = _text(c)
                elif _is(c, b"ForeName"):
                    fore = _text(c)
                elif _is(c, b"Initials"):
                    initials = _text(c)
                elif _is(c, b"AffiliationInfo"):
                    af = _elem(c.children)
                    while af is not NULL:
                        if _is(af, b"Affiliation"):
                            if _elem(af.children) is NULL:
                                t = _text(af)
                            else:
                                t = self._flatten(af)
                            if t:
                                affs.append(t.strip())
                        af = _elem(af.next)
                elif _is(c, b"CollectiveName"):
                    collective = self._flatten(c) or None
                elif _is(c, b"Identifier"):
                    if orcid is None and _get(c, b"Source") == "ORCID":
                        t = _text(c)
                        if t:
                            orcid = self.clean_orcid(t)
                c = _elem(c.next)
            out.append(self.Author.make((last, fore, initials, collective, tuple(affs), orcid)))
            a = _elem(a.next)
        return tuple(out)

    cdef tuple _mesh(self, xmlNode* mesh_list):
        out = []
        cdef dict cache = self.mesh_cache
        cdef xmlNode* mh = _elem(mesh_list.children)
        cdef xmlNode* c
        cdef bint major
        while mh is not NULL:
            descriptor = ui = None
            major = False
            quals = []
            c = _elem(mh.children)
            while c is not NULL:
                if _is(c, b"DescriptorName"):
                    descriptor = _text(c)
                    ui = _get(c, b"UI")
                    if _get(c, b"MajorTopicYN") == "Y":
                        major = True
                else:  # QualifierName
                    q = _text(c)
                    if q:
                        quals.append(q)
                    if _get(c, b"MajorTopicYN") == "Y":
                        major = True
                c = _elem(c.next)
            if descriptor:
                key = (descriptor, ui, major, *quals)
                heading = cache.get(key)
                if heading is None:
                    if len(cache) >= self.mesh_cache_size:
                        cache.clear()
                    heading = self.MeshHeading(descriptor, ui, major, tuple(quals))
                    cache[key] = heading
                out.append(heading)
            mh = _elem(mh.next)
        return tuple(out)

    # -- the record

    cdef object _article(self, xmlNode* elem, ref):
        cdef xmlNode* mc = NULL
        cdef xmlNode* pd_el = NULL
        cdef xmlNode* child = _elem(elem.children)
        cdef xmlNode* pmid_el = NULL
        cdef xmlNode* article = NULL
        cdef xmlNode* jc
        cdef xmlNode* ji
        cdef xmlNode* sub
        while child is not NULL:
            if _is(child, b"MedlineCitation"):
                mc = child
            elif _is(child, b"PubmedData"):
                pd_el = child
            child = _elem(child.next)
        if mc is NULL:
            raise _Bail()

        date_completed = date_revised = None
        mesh = ()
        keywords = []
        retraction_in = []
        cites = []
        child = _elem(mc.children)
        while child is not NULL:
            if _is(child, b"PMID"):
                if pmid_el is NULL:
                    pmid_el = child
            elif _is(child, b"Article"):
                article = child
            elif _is(child, b"MeshHeadingList"):
                mesh = self._mesh(child)
            elif _is(child, b"DateRevised"):
                date_revised = self._ymd(child)
            elif _is(child, b"DateCompleted"):
                date_completed = self._ymd(child)
            elif _is(child, b"KeywordList"):
                sub = _elem(child.children)
                while sub is not NULL:
                    t = self._flatten(sub)
                    if t:
                        keywords.append(t)
                    sub = _elem(sub.next)
            elif _is(child, b"CommentsCorrectionsList"):
                sub = _elem(child.children)
                while sub is not NULL:
                    rt = _get(sub, b"RefType")
                    if rt == "RetractionIn":
                        self._append_pmids(sub, retraction_in)
                    elif rt == "Cites":
                        self._append_pmids(sub, cites)
                    sub = _elem(sub.next)
            child = _elem(child.next)
        if pmid_el is NULL:
            raise _Bail()
        pmid = self._id(pmid_el, self.max_pmid)
        if pmid is None:
            raise _Bail()
        ver = _get(pmid_el, b"Version")
        if ver is None:
            version = 1
        else:
            version = self.id_value(ver, self.max_version)
            if version is None:
                raise _Bail()
        if article is NULL:
            raise _Bail()

        title = ""
        vernacular_title = journal = journal_iso = volume = issue = pages = doi = None
        abstract = ()
        authors = ()
        pub_date = self.no_date
        article_date = None
        publication_types = []
        languages = []
        child = _elem(article.children)
        while child is not NULL:
            if _is(child, b"Journal"):
                jc = _elem(child.children)
                while jc is not NULL:
                    if _is(jc, b"JournalIssue"):
                        ji = _elem(jc.children)
                        while ji is not NULL:
                            if _is(ji, b"PubDate"):
                                pub_date = self._pub_date(ji)
                            elif _is(ji, b"Volume"):
                                volume = _text(ji)
                            elif _is(ji, b"Issue"):
                                issue = _text(ji)
                            ji = _elem(ji.next)
                    elif _is(jc, b"Title"):
                        journal = _text(jc)
                    elif _is(jc, b"ISOAbbreviation"):
                        journal_iso = _text(jc)
                    jc = _elem(jc.next)
            elif _is(child, b"ArticleTitle"):
                title = self._flatten(child)
            elif _is(child, b"Abstract"):
                abstract = self._abstract(child)
            elif _is(child, b"AuthorList"):
                authors = self._authors(child)
            elif _is(child, b"Pagination"):
                sub = _elem(child.children)
                while sub is not NULL:
                    if _is(sub, b"MedlinePgn"):
                        pages = _text(sub)
                    sub = _elem(sub.next)
            elif _is(child, b"ELocationID"):
                if (
                    doi is None
                    and _get(child, b"EIdType") == "doi"
                    and _get(child, b"ValidYN") != "N"
                ):
                    doi = self.clean_doi(_text(child))
            elif _is(child, b"Language"):
                t = _text(child)
                if t:
                    languages.append(t.strip())
            elif _is(child, b"PublicationTypeList"):
                sub = _elem(child.children)
                while sub is not NULL:
                    t = _text(sub)
                    if t:
                        publication_types.append(t.strip())
                    sub = _elem(sub.next)
            elif _is(child, b"ArticleDate"):
                if article_date is None and _get(child, b"DateType", "Electronic") == "Electronic":
                    article_date = self._ymd(child)
            elif _is(child, b"VernacularTitle"):
                vernacular_title = self._flatten(child) or None
            child = _elem(child.next)

        entrez_date = pubmed_date = None
        pmcid = id_doi = None
        references = []
        if pd_el is not NULL:
            child = _elem(pd_el.children)
            while child is not NULL:
                if _is(child, b"ReferenceList"):
                    self._reference_pmids(child, references)
                elif _is(child, b"History"):
                    sub = _elem(child.children)
                    while sub is not NULL:
                        status = _get(sub, b"PubStatus")
                        if status == "entrez":
                            if entrez_date is None:
                                entrez_date = self._ymd(sub)
                        elif status == "pubmed":
                            if pubmed_date is None:
                                pubmed_date = self._ymd(sub)
                        sub = _elem(sub.next)
                elif _is(child, b"ArticleIdList"):
                    sub = _elem(child.children)
                    while sub is not NULL:
                        id_type = _get(sub, b"IdType")
                        if id_type == "doi":
                            if id_doi is None:
                                id_doi = self.clean_doi(_text(sub))
                        elif id_type == "pmc":
                            if pmcid is None:
                                t = _text(sub)
                                if t:
                                    pmcid = t.strip() or None
                        sub = _elem(sub.next)
                child = _elem(child.next)
        if cites:
            references.extend(cites)
        return self.Record.make((
            pmid,
            version,
            title,
            ref,
            abstract,
            vernacular_title,
            journal,
            journal_iso,
            volume,
            issue,
            pages,
            pub_date,
            article_date,
            entrez_date,
            pubmed_date,
            date_completed,
            date_revised,
            authors,
            mesh,
            tuple(keywords),
            tuple(publication_types),
            tuple(languages),
            doi or id_doi,
            pmcid,
            tuple(dict.fromkeys(references)) if references else (),
            bool(retraction_in) or RETRACTED_TYPE in publication_types,
            tuple(dict.fromkeys(retraction_in)) if retraction_in else (),
            False,
            _get(mc, b"Status"),
        ))
