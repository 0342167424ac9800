#!/usr/bin/env python3
"""Derive a JSON Schema (draft 2020-12) for the OCSF "Detection Finding" class
(class_uid 2004) from the OCSF schema *source* tree.

    python3 scripts/ocsf-schema.py [OCSF_SOURCE_DIR] \
        > schemas/ocsf-1.8.0-detection_finding.schema.json

OCSF_SOURCE_DIR defaults to <repo>/../shared/corpus/ocsf-schema-1.8.0.
Standard library only; the output is deterministic (sorted keys, two-space
indent, trailing newline) so it can be committed and checked for freshness:

    python3 scripts/ocsf-schema.py | diff - schemas/ocsf-1.8.0-detection_finding.schema.json

How the OCSF source is compiled (mirrors the reference ocsf-server, core schema
only, no extensions):

* ``$include`` in an ``attributes`` map merges the included file's attributes
  under the including file's own (the includer wins).  Attributes taken from a
  file with ``"meta": "profile"`` are marked with that profile; the profile's
  ``annotations`` fill in missing keys.
* ``extends`` deep-merges the parent's attributes under the child's (the child
  wins; an attribute set to ``null`` is removed); other top-level keys are
  replaced by the child's (``constraints: {}`` clears inherited constraints),
  ``profiles`` are concatenated.
* Every attribute is then deep-merged over its dictionary.json entry (type,
  is_array, enum, caption, description, @deprecated ...).  Enums merge, so a
  class enum adds to / re-captions the dictionary enum (e.g. 0 Unknown and
  99 Other come from base_event / dictionary).
* The synthetic ``datetime`` profile adds ``<name>_dt`` (datetime_t, RFC 3339
  string, optional) beside every attribute whose dictionary type is
  timestamp_t, in the class and in every object.
* class_uid = category uid * 1000 + class uid; type_uid = class_uid * 100 +
  activity_id.
* The ``observable`` object's ``type_id`` enum is built from dictionary types
  and attributes, object-level ``observable`` and object / class attribute
  ``observable`` values.

JSON Schema choices:

* ``required`` only lists attributes whose requirement is "required" and that
  are neither profile attributes (a profile may be off) nor deprecated.
* Every object gets ``additionalProperties: false``, except objects with no
  attributes (the generic ``object`` type, used by ``unmapped`` etc.), which
  OCSF treats as open; json_t attributes accept any JSON value.
* OCSF ``constraints`` become ``anyOf`` (at_least_one) / ``oneOf`` (just_one)
  of ``required`` clauses, as the OCSF validator reports them as errors.
* ``null`` is not accepted anywhere: absent attributes must be omitted.
"""

import copy
import glob
import json
import os
import sys

CLASS_NAME = "detection_finding"
SCHEMA_ID_FMT = "https://akwatch.dev/schemas/ocsf-{version}/{name}.schema.json"

# JSON Schema types of the OCSF primitive (base) types.
BASE_TYPES = {
    "boolean_t": {"type": "boolean"},
    "float_t": {"type": "number"},
    "integer_t": {"type": "integer"},
    "long_t": {"type": "integer"},
    "string_t": {"type": "string"},
    "json_t": {},
}


def die(msg):
    sys.stderr.write("ocsf-schema: %s\n" % msg)
    sys.exit(1)


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def deep_merge(left, right):
    """ocsf-server Utils.deep_merge: right wins; maps merge recursively; an
    empty map on either side yields the other side."""
    if left is None:
        return copy.deepcopy(right)
    if right is None:
        return copy.deepcopy(left)
    out = copy.deepcopy(left)
    for key, rval in right.items():
        lval = out.get(key)
        if isinstance(lval, dict) and isinstance(rval, dict):
            if not lval:
                out[key] = copy.deepcopy(rval)
            elif not rval:
                pass
            else:
                out[key] = deep_merge(lval, rval)
        else:
            out[key] = copy.deepcopy(rval)
    return out


class Source:
    def __init__(self, root):
        self.root = root
        self.version = load_json(os.path.join(root, "version.json"))["version"]
        self.dictionary = load_json(os.path.join(root, "dictionary.json"))
        self.dict_attrs = self.dictionary["attributes"]
        self.types = self.dictionary["types"]["attributes"]
        self.categories = load_json(os.path.join(root, "categories.json"))["attributes"]
        self._include_cache = {}
        self.profile_defs = {}
        self.raw_objects = self._read_dir("objects")
        self.raw_classes = self._read_dir("events")
        self.objects = {}

    # -- reading -----------------------------------------------------------
    def _read_dir(self, sub):
        out = {}
        pattern = os.path.join(self.root, sub, "**", "*.json")
        for path in sorted(glob.glob(pattern, recursive=True)):
            data = load_json(path)
            data = self._resolve_includes(data)
            name = data.get("name") or os.path.splitext(os.path.basename(path))[0]
            if name in out:
                die("duplicate %s name %r (%s)" % (sub, name, path))
            data["_path"] = os.path.relpath(path, self.root)
            out[name] = data
        return out

    def _included(self, rel):
        if rel in self._include_cache:
            return self._include_cache[rel]
        path = os.path.join(self.root, rel)
        if not os.path.isfile(path):
            die("$include target not found: %s" % rel)
        data = self._resolve_includes(load_json(path))
        attrs = data.get("attributes") or {}
        if data.get("meta") == "profile":
            pname = data["name"]
            self.profile_defs[pname] = {
                "caption": data.get("caption", pname),
                "description": data.get("description", ""),
                "path": rel,
            }
            annotations = data.get("annotations") or {}
            marked = {}
            for k, v in attrs.items():
                v = dict(v)
                v["profile"] = pname
                marked[k] = deep_merge(annotations, v)
            attrs = marked
        data = dict(data)
        data["attributes"] = attrs
        self._include_cache[rel] = data
        return data

    def _resolve_includes(self, data):
        attrs = data.get("attributes")
        if not isinstance(attrs, dict):
            return data
        inc = attrs.get("$include")
        if inc is not None:
            files = [inc] if isinstance(inc, str) else list(inc)
            own = {k: v for k, v in attrs.items() if k != "$include"}
            merged = {}
            for rel in files:
                merged = deep_merge(merged, self._included(rel)["attributes"])
            attrs = deep_merge(merged, own)
        # attribute-level $include (enum files)
        out = {}
        for k, v in attrs.items():
            if isinstance(v, dict) and "$include" in v:
                base = load_json(os.path.join(self.root, v["$include"]))
                v = deep_merge(base, {kk: vv for kk, vv in v.items() if kk != "$include"})
            out[k] = v
        data = dict(data)
        data["attributes"] = out
        return data

    # -- extends -------------------------------------------------------------
    def _resolve_extends(self, items, name, seen=()):
        item = items.get(name)
        if item is None:
            die("undefined item %r" % name)
        parent = item.get("extends")
        if not parent:
            out = copy.deepcopy(item)
            out["_chain"] = [name]
            return out
        if parent in seen:
            die("extends cycle at %r" % name)
        base = self._resolve_extends(items, parent, seen + (name,))
        attrs = deep_merge(base.get("attributes") or {}, item.get("attributes") or {})
        attrs = {k: v for k, v in attrs.items() if v is not None}
        out = dict(base)
        for k, v in item.items():
            if k == "profiles":
                out[k] = list(dict.fromkeys((base.get("profiles") or []) + (v or [])))
            elif v is not None or k not in out:
                out[k] = v
        out.pop("extends", None)
        out["attributes"] = attrs
        out["_chain"] = base["_chain"] + [name]
        return out

    # -- attribute compilation ----------------------------------------------
    def compile_attrs(self, owner, attrs):
        """Merge attributes over the dictionary, add datetime siblings."""
        out = {}
        for name, attr in attrs.items():
            base = self.dict_attrs.get(name)
            if base is None:
                die("%s: attribute %r is not in dictionary.json" % (owner, name))
            a = deep_merge(base, attr)
            a.setdefault("requirement", "optional")
            if "type" not in a:
                die("%s: attribute %r has no type" % (owner, name))
            out[name] = a
        for name in list(out):
            if self.dict_attrs[name].get("type") == "timestamp_t":
                dt = copy.deepcopy(out[name])
                dt["type"] = "datetime_t"
                dt["profile"] = "datetime"
                dt["requirement"] = "optional"
                out.setdefault(name + "_dt", dt)
        return out

    def object(self, name):
        if name not in self.objects:
            obj = self._resolve_extends(self.raw_objects, name)
            obj["attributes"] = self.compile_attrs("object " + name, obj.get("attributes") or {})
            self.objects[name] = obj
        return self.objects[name]

    def klass(self, name):
        cls = self._resolve_extends(self.raw_classes, name)
        cls["attributes"] = self.compile_attrs("class " + name, cls.get("attributes") or {})
        cat = self.categories.get(cls.get("category"))
        if cat is None:
            die("class %s: unknown category %r" % (name, cls.get("category")))
        cls["category_uid"] = cat["uid"]
        cls["category_caption"] = cat["caption"]
        cls["class_uid"] = cat["uid"] * 1000 + cls["uid"]
        return cls

    # -- observables ---------------------------------------------------------
    def observable_type_ids(self):
        ids = {}

        def put(num, caption, kind):
            key = str(num)
            if key in ids:
                die("observable type_id collision %s: %r vs %r" % (key, caption, ids[key]))
            ids[key] = {"caption": caption, "kind": kind}

        for name in sorted(self.raw_classes):
            c = self.raw_classes[name]
            for k, v in sorted((c.get("attributes") or {}).items()):
                if isinstance(v, dict) and "observable" in v:
                    put(v["observable"], "%s Class: %s" % (c.get("caption", name), k), "Class-Specific Attribute")
            for path, num in sorted((c.get("observables") or {}).items()):
                put(num, "%s Class: %s" % (c.get("caption", name), path), "Class-Specific Attribute")
        for name in sorted(self.raw_objects):
            o = self.raw_objects[name]
            if "observable" in o:
                put(o["observable"], o.get("caption", name), "Object")
            for k, v in sorted((o.get("attributes") or {}).items()):
                if isinstance(v, dict) and "observable" in v:
                    put(v["observable"], "%s Object: %s" % (o.get("caption", name), k), "Object-Specific Attribute")
        for k, v in sorted(self.types.items()):
            if "observable" in v:
                put(v["observable"], v["caption"], "Dictionary Type")
        for k, v in sorted(self.dict_attrs.items()):
            if "observable" in v:
                put(v["observable"], v["caption"], "Dictionary Attribute")
        return ids


def enum_keys(enum, is_int):
    keys = [k for k, v in enum.items() if v is not None]
    if is_int:
        return sorted(int(k) for k in keys)
    return sorted(keys)


def enum_comment(enum, is_int):
    parts = []
    for k in enum_keys(enum, is_int):
        v = enum[str(k)]
        cap = v.get("caption", "") if isinstance(v, dict) else ""
        dep = " (deprecated)" if isinstance(v, dict) and "@deprecated" in v else ""
        parts.append("%s=%s%s" % (k, cap, dep))
    return "; ".join(parts)


class Generator:
    def __init__(self, src):
        self.src = src
        self.defs = {}
        self.pending = []
        self.profiles_seen = set()

    def base_type(self, tname):
        seen = []
        t = tname
        while t not in BASE_TYPES:
            td = self.src.types.get(t)
            if td is None or "type" not in td or t in seen:
                die("cannot resolve type %r" % tname)
            seen.append(t)
            t = td["type"]
        return t

    def type_schema(self, tname):
        """JSON Schema for a dictionary type (not an object)."""
        base = self.base_type(tname)
        s = dict(BASE_TYPES[base])
        # constraints of the type itself, else of its super type
        chain = [tname]
        t = tname
        while t in self.src.types and "type" in self.src.types[t]:
            t = self.src.types[t]["type"]
            chain.append(t)
        for key, js in (("regex", "pattern"), ("max_len", "maxLength")):
            for t in chain:
                if key in self.src.types.get(t, {}):
                    s[js] = self.src.types[t][key]
                    break
        for t in chain:
            rng = self.src.types.get(t, {}).get("range")
            if rng:
                s["minimum"], s["maximum"] = rng[0], rng[1]
                break
        return s

    def ref(self, obj_name):
        if obj_name not in self.defs and obj_name not in self.pending:
            self.pending.append(obj_name)
        return {"$ref": "#/$defs/" + obj_name}

    def attr_schema(self, owner, name, a):
        tname = a["type"]
        is_int = False
        if tname in self.src.types:
            item = self.type_schema(tname)
            is_int = item.get("type") == "integer"
            ocsf_type = tname
        elif tname in self.src.raw_objects:
            item = self.ref(tname)
            ocsf_type = "object"
        else:
            die("%s.%s: unknown type %r" % (owner, name, tname))
        if ocsf_type == "object":
            comment = ["OCSF object " + tname]
        else:
            comment = ["OCSF type " + ocsf_type]
        if tname == "timestamp_t":
            comment[0] += " (milliseconds since the Unix epoch, UTC)"
        elif tname == "datetime_t":
            comment[0] += " (RFC 3339 string)"
        comment.append("requirement " + a.get("requirement", "optional"))
        if a.get("profile"):
            comment.append("profile " + a["profile"])
            self.profiles_seen.add(a["profile"])
        enum = a.get("enum")
        if enum:
            if "$ref" in item:
                die("%s.%s: enum on object type" % (owner, name))
            vals = enum_keys(enum, is_int)
            if len(vals) == 1:
                item["const"] = vals[0]
            else:
                item["enum"] = vals
            comment.append("enum " + enum_comment(enum, is_int))
        if a.get("sibling"):
            comment.append("sibling " + a["sibling"])
        if a.get("is_array"):
            s = {"type": "array", "items": item}
        else:
            s = dict(item)
        if a.get("caption"):
            s["title"] = a["caption"]
        desc = a.get("description", "")
        if "@deprecated" in a:
            dep = a["@deprecated"] or {}
            s["deprecated"] = True
            desc = ("DEPRECATED since %s: %s " % (dep.get("since", "?"), dep.get("message", ""))).rstrip() + " " + desc
        if desc:
            s["description"] = desc.strip()
        s["$comment"] = "; ".join(comment)
        return s

    def properties(self, owner, attrs):
        """Returns (properties, required, notes) where notes describes the
        recommended attributes and the requirements that are not enforced."""
        props = {}
        required = []
        groups = {}
        for name in sorted(attrs):
            a = attrs[name]
            props[name] = self.attr_schema(owner, name, a)
            req = a.get("requirement", "optional")
            if req not in ("required", "recommended"):
                continue
            if "@deprecated" in a:
                groups.setdefault("%s but deprecated (not enforced)" % req, []).append(name)
            elif a.get("profile"):
                groups.setdefault("%s when its profile is applied (not enforced)" % req, []).append(
                    "%s [%s]" % (name, a["profile"])
                )
            elif req == "required":
                required.append(name)
            else:
                groups.setdefault("recommended", []).append(name)
        order = sorted(groups, key=lambda g: (g != "recommended", g))
        notes = "; ".join("%s: %s" % (g, ", ".join(groups[g])) for g in order)
        return props, required, notes

    @staticmethod
    def constraints(owner, cons, attrs):
        out = {}
        for kind, names in sorted((cons or {}).items()):
            for n in names:
                if n not in attrs:
                    die("%s: constraint %s names unknown attribute %r" % (owner, kind, n))
            clauses = [{"required": [n]} for n in names]
            if kind == "at_least_one":
                out.setdefault("anyOf", clauses)
            elif kind == "just_one":
                out.setdefault("oneOf", clauses)
            else:
                die("%s: unknown constraint %r" % (owner, kind))
        return out

    def object_def(self, name):
        obj = self.src.object(name)
        attrs = obj["attributes"]
        owner = "object " + name
        s = {"type": "object", "title": obj.get("caption", name)}
        desc = obj.get("description", "")
        if "@deprecated" in obj:
            dep = obj["@deprecated"] or {}
            s["deprecated"] = True
            desc = "DEPRECATED since %s: %s %s" % (dep.get("since", "?"), dep.get("message", ""), desc)
        if not attrs:
            s["description"] = (desc + " Open object: any attributes are accepted.").strip()
            s["$comment"] = "OCSF object %s (no attributes defined: open)" % name
            return s
        props, required, notes = self.properties(owner, attrs)
        s["properties"] = props
        s["additionalProperties"] = False
        if required:
            s["required"] = required
        s.update(self.constraints(owner, obj.get("constraints"), attrs))
        s["description"] = desc.strip()
        comment = "OCSF object %s" % name
        chain = obj.get("_chain")
        if chain:
            comment += " (extends %s)" % " -> ".join(reversed(chain[:-1]))
        if notes:
            comment += "; " + notes
        if obj.get("constraints"):
            comment += "; constraints: " + json.dumps(obj["constraints"], sort_keys=True)
        s["$comment"] = comment
        return s

    def build(self):
        src = self.src
        cls = src.klass(CLASS_NAME)
        attrs = cls["attributes"]
        class_uid = cls["class_uid"]
        owner = "class " + CLASS_NAME

        # observable.type_id gets the schema-wide observable enum
        obs = src.object("observable")
        obs["attributes"]["type_id"] = deep_merge(
            obs["attributes"]["type_id"],
            {"enum": {k: {"caption": v["caption"]} for k, v in src.observable_type_ids().items()}},
        )

        # class_uid / category_uid / type_uid enums as ocsf-server builds them
        activity = attrs["activity_id"].get("enum") or {}
        activities = enum_keys(activity, True)
        attrs["class_uid"]["enum"] = {str(class_uid): {"caption": cls["caption"]}}
        attrs["category_uid"]["enum"] = {str(cls["category_uid"]): {"caption": cls["category_caption"]}}
        type_enum = {str(class_uid * 100): {"caption": cls["caption"] + ": Unknown"}}
        for a in activities:
            type_enum[str(class_uid * 100 + a)] = {
                "caption": "%s: %s" % (cls["caption"], activity[str(a)].get("caption", ""))
            }
        attrs["type_uid"]["enum"] = type_enum

        props, required, notes = self.properties(owner, attrs)

        while self.pending:
            name = self.pending.pop(0)
            if name not in self.defs:
                self.defs[name] = None  # placeholder against re-queueing
                self.defs[name] = self.object_def(name)

        class_profiles = list(dict.fromkeys(cls.get("profiles") or []))
        object_profiles = sorted(self.profiles_seen - set(class_profiles))
        all_profiles = sorted(self.profiles_seen | set(class_profiles))

        title = "OCSF %s %s (class_uid %d)" % (src.version, cls["caption"], class_uid)
        description = (
            "%s Generated by scripts/ocsf-schema.py from the OCSF %s schema source "
            "(core only, no extensions): class %s (extends %s), category %s (%d). "
            "Profile attributes are allowed but never required: class profiles %s; "
            "profiles reached through objects %s. Attributes marked deprecated are still accepted. "
            "Recommended attributes, and requirements that are not enforced, are listed in each $comment. "
            "type_uid must equal class_uid * 100 + activity_id."
            % (
                cls.get("description", ""),
                src.version,
                CLASS_NAME,
                " -> ".join(reversed(cls["_chain"][:-1])),
                cls["category_caption"],
                cls["category_uid"],
                ", ".join(class_profiles) or "none",
                ", ".join(object_profiles) or "none",
            )
        )

        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": SCHEMA_ID_FMT.format(version=src.version, name=CLASS_NAME),
            "title": title,
            "description": description,
            "$comment": "OCSF class %s uid %d; profiles: %s; %s"
            % (CLASS_NAME, class_uid, ", ".join(all_profiles), notes),
            "type": "object",
            "properties": props,
            "additionalProperties": False,
            "required": required,
            "$defs": self.defs,
        }
        cons = self.constraints(owner, cls.get("constraints"), attrs)
        allof = [
            {
                "if": {"properties": {"activity_id": {"const": a}}, "required": ["activity_id"]},
                "then": {"properties": {"type_uid": {"const": class_uid * 100 + a}}},
            }
            for a in activities
        ]
        schema.update({k: v for k, v in cons.items() if k != "allOf"})
        schema["allOf"] = allof
        return schema


def main(argv):
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        sys.stderr.write(__doc__)
        return 2
    if len(argv) == 2:
        root = argv[1]
    else:
        here = os.path.dirname(os.path.abspath(__file__))
        root = os.path.join(here, "..", "..", "shared", "corpus", "ocsf-schema-1.8.0")
    root = os.path.normpath(root)
    if not os.path.isfile(os.path.join(root, "dictionary.json")):
        die("not an OCSF schema source tree: %s" % root)
    src = Source(root)
    schema = Generator(src).build()
    sys.stdout.write(json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
