"""Outlines (imports and signatures) per language, from small real-looking files."""
from __future__ import annotations

from keystroke.server.context.parse import fallback_outline, language_of, outline, parser_for


def sig(out, name, parent=None):
    hits = [s for s in out.symbols if s.name == name and s.parent == parent]
    assert hits, f"{name} (parent {parent}) not in {[(s.name, s.parent) for s in out.symbols]}"
    return hits[0].signature


PY = '''"""Inventory service."""
import os
import numpy as np
from typing import Optional
from .models import Item, Store as S
from . import utils

MAX_ITEMS = 500


@dataclass
class Inventory:
    """Tracks stock per warehouse.

    Longer explanation that must not appear.
    """
    name: str
    capacity: int = 100

    def __init__(self, name: str, *,
                 capacity: int = 100) -> None:
        self.name = name
        self.capacity = capacity

    @property
    def free(self) -> int:
        """Units still available."""
        return self.capacity - len(self.items)

    async def refresh(self, client) -> None:
        await client.pull(self.name)


def load_inventory(path: str) -> Optional[Inventory]:
    """Read an inventory from a JSON file."""
    with open(path) as f:
        data = json.load(f)
    return Inventory(**data)
'''


def test_python_imports_bind_names():
    out = outline(PY, "python")
    assert out.parsed
    mods = {i.module: i.names for i in out.imports}
    assert mods["os"] == (("os", None),)
    assert mods["numpy"] == (("np", None),)
    assert mods[".models"] == (("Item", "Item"), ("S", "Store"))
    assert mods["."] == (("utils", "utils"),)


def test_python_signatures_elide_bodies_and_keep_first_doc_line():
    out = outline(PY, "python")
    assert sig(out, "load_inventory") == (
        'def load_inventory(path: str) -> Optional[Inventory]:\n    """Read an inventory from a JSON file."""\n    ...')
    cls = sig(out, "Inventory")
    assert cls.startswith("@dataclass\nclass Inventory:\n")
    assert "Tracks stock per warehouse." in cls and "Longer explanation" not in cls
    init = sig(out, "__init__", "Inventory")
    assert init.startswith("def __init__(self, name: str, *,\n") and "self.name = name" not in init
    assert sig(out, "free", "Inventory").startswith("@property\ndef free(self) -> int:")
    assert sig(out, "refresh", "Inventory").startswith("async def refresh(self, client) -> None:")
    assert sig(out, "MAX_ITEMS") == "MAX_ITEMS = 500"
    assert sig(out, "capacity", "Inventory") == "capacity: int = 100"


def test_python_broken_code_still_outlines_the_rest():
    broken = PY.replace("def free(self) -> int:", "def free(self -> int:")
    out = outline(broken, "python")
    names = {s.name for s in out.symbols}
    assert {"Inventory", "load_inventory"} <= names


JS = """import { readFile } from 'fs/promises';
import Router, { json as parseJson } from './router.js';
const path = require('path');

/**
 * Loads a config file.
 * @param {string} file
 */
export async function loadConfig(file) {
  const text = await readFile(file, 'utf8');
  return parseJson(text);
}

export const mergeConfig = (base, extra) => {
  return { ...base, ...extra };
};

class ConfigStore extends Map {
  constructor(root) {
    super();
    this.root = root;
  }
  resolve(name) {
    return path.join(this.root, name);
  }
}
"""


def test_javascript_imports_and_signatures():
    out = outline(JS, "javascript")
    mods = {i.module: dict(i.names) for i in out.imports}
    assert mods["fs/promises"] == {"readFile": "readFile"}
    assert mods["./router.js"] == {"parseJson": "json", "Router": None}
    assert mods["path"] == {"path": None}
    assert sig(out, "loadConfig") == "// Loads a config file.\nexport async function loadConfig(file) { ... }"
    assert sig(out, "mergeConfig") == "export const mergeConfig = (base, extra) => { ... }"
    assert sig(out, "resolve", "ConfigStore") == "resolve(name) { ... }"
    assert "this.root = root" not in sig(out, "ConfigStore")


TS = """import type { User } from "../models/user";
import * as db from "./db";

export interface Page<T> {
  items: T[];
  next?: string;
}

export type UserId = string;

export class UserService {
  private cache = new Map<UserId, User>();

  constructor(private readonly pool: db.Pool) {}

  async find(id: UserId): Promise<User | undefined> {
    return this.cache.get(id) ?? (await this.pool.one(id));
  }
}
"""


def test_typescript_imports_and_signatures():
    out = outline(TS, "typescript")
    mods = {i.module: dict(i.names) for i in out.imports}
    assert mods["../models/user"] == {"User": "User"}
    assert mods["./db"] == {"db": None}
    assert sig(out, "Page") == "export interface Page<T> {\n  items: T[];\n  next?: string;\n}"
    assert sig(out, "UserId") == "export type UserId = string;"
    assert sig(out, "find", "UserService") == "async find(id: UserId): Promise<User | undefined> { ... }"
    assert language_of("typescriptreact") == "tsx" and parser_for("tsx") is not None


GO = """package store

import (
	"context"
	"fmt"

	m "example.com/shop/models"
)

// Store keeps orders in memory.
type Store struct {
	orders map[string]m.Order
}

// Get returns the order with the given id.
func (s *Store) Get(ctx context.Context, id string) (m.Order, error) {
	o, ok := s.orders[id]
	if !ok {
		return m.Order{}, fmt.Errorf("no order %q", id)
	}
	return o, nil
}

func NewStore() *Store {
	return &Store{orders: map[string]m.Order{}}
}
"""


def test_go_imports_and_signatures():
    out = outline(GO, "go")
    assert [(i.module, i.names) for i in out.imports] == [
        ("context", (("context", None),)), ("fmt", (("fmt", None),)),
        ("example.com/shop/models", (("m", None),))]
    assert sig(out, "Store") == "// Store keeps orders in memory.\ntype Store struct {\n\torders map[string]m.Order\n}"
    assert sig(out, "Get", "Store") == (
        "// Get returns the order with the given id.\n"
        "func (s *Store) Get(ctx context.Context, id string) (m.Order, error) { ... }")
    assert sig(out, "NewStore") == "func NewStore() *Store { ... }"


RUST = """use std::collections::HashMap;
use crate::models::{Order, Status as St};
mod pricing;

/// In-memory order book.
pub struct Book {
    orders: HashMap<u64, Order>,
}

impl Book {
    /// Look up one order.
    pub fn get(&self, id: u64) -> Option<&Order> {
        self.orders.get(&id)
    }
}

pub trait Priced {
    fn price(&self) -> u64;
}
"""


def test_rust_imports_and_signatures():
    out = outline(RUST, "rust")
    mods = {i.module: dict(i.names) for i in out.imports}
    assert mods["std::collections"] == {"HashMap": "HashMap"}
    assert mods["crate::models"] == {"Order": "Order", "St": "Status"}
    assert mods["mod::pricing"] == {"pricing": None}
    assert sig(out, "Book").startswith("/// In-memory order book.".replace("///", "//") + "\npub struct Book {")
    assert sig(out, "get", "Book") == "// Look up one order.\npub fn get(&self, id: u64) -> Option<&Order> { ... }"
    assert sig(out, "price", "Priced") == "fn price(&self) -> u64;"


JAVA = """package com.acme.billing;

import java.util.List;
import java.util.Map;
import static com.acme.util.Money.format;

/** Computes invoices. */
public class InvoiceService {
    private final Map<String, Double> rates;

    public InvoiceService(Map<String, Double> rates) {
        this.rates = rates;
    }

    /** Total of all lines, taxed. */
    public double total(List<Line> lines, String region) {
        double sum = 0;
        for (Line l : lines) sum += l.amount();
        return sum * (1 + rates.get(region));
    }
}
"""


def test_java_imports_and_signatures():
    out = outline(JAVA, "java")
    mods = {i.module: dict(i.names) for i in out.imports}
    assert mods["java.util.List"] == {"List": None}
    assert mods["com.acme.util.Money"] == {"format": None}
    assert sig(out, "InvoiceService").startswith("// Computes invoices.\npublic class InvoiceService")
    assert sig(out, "total", "InvoiceService") == (
        "// Total of all lines, taxed.\npublic double total(List<Line> lines, String region) { ... }")
    assert sig(out, "rates", "InvoiceService") == "private final Map<String, Double> rates;"


C = """#ifndef RING_H
#define RING_H
#include <stddef.h>
#include "alloc.h"

/* A fixed-size ring buffer. */
typedef struct ring {
    unsigned char *buf;
    size_t head, tail, cap;
} ring_t;

/* Create a ring of cap bytes. */
ring_t *ring_new(size_t cap);

static inline size_t ring_len(const ring_t *r) {
    return (r->tail - r->head) % r->cap;
}

#define RING_EMPTY(r) ((r)->head == (r)->tail)
#endif
"""


def test_c_imports_and_signatures():
    out = outline(C, "c")
    assert [i.module for i in out.imports] == ["<stddef.h>", "alloc.h"]
    assert sig(out, "ring_new") == "// Create a ring of cap bytes.\nring_t *ring_new(size_t cap);"
    assert sig(out, "ring_len") == "static inline size_t ring_len(const ring_t *r) { ... }"
    assert sig(out, "ring_t").startswith("// A fixed-size ring buffer.\ntypedef struct ring {")
    assert sig(out, "RING_EMPTY") == "#define RING_EMPTY(r) ((r)->head == (r)->tail)"
    assert "RING_H" not in {s.name for s in out.symbols}


CPP = """#include <string>
#include <vector>
#include "tokenizer.h"

namespace text {

/// Splits text into words.
class Splitter {
 public:
  explicit Splitter(std::string sep);
  std::vector<std::string> split(const std::string& s) const;
  size_t count() const { return count_; }

 private:
  std::string sep_;
  size_t count_ = 0;
};

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (const auto& p : parts) out += p + sep;
  return out;
}

}  // namespace text
"""


def test_cpp_imports_and_signatures():
    out = outline(CPP, "cpp")
    assert [i.module for i in out.imports] == ["<string>", "<vector>", "tokenizer.h"]
    assert sig(out, "Splitter").startswith("// Splits text into words.\nclass Splitter")
    assert sig(out, "split", "Splitter") == "std::vector<std::string> split(const std::string& s) const;"
    assert sig(out, "count", "Splitter") == "size_t count() const { ... }"
    assert sig(out, "join") == "std::string join(const std::vector<std::string>& parts, const std::string& sep) { ... }"


RUBY = """require 'json'
require_relative 'money'

module Billing
  class Invoice
    def initialize(lines)
      @lines = lines
    end

    def total
      @lines.sum(&:amount)
    end
  end
end
"""


def test_fallback_outlines_unknown_languages_by_indentation():
    out = outline(RUBY, language_of("ruby", "invoice.rb"))
    assert not out.parsed
    assert [i.text for i in out.imports] == ["require 'json'", "require_relative 'money'"]
    names = {(s.name, s.parent) for s in out.symbols}
    assert {("Billing", None), ("Invoice", "Billing"), ("initialize", "Invoice"), ("total", "Invoice")} <= names
    total = [s for s in out.symbols if s.name == "total"][0]
    assert total.signature.startswith("def total") and "@lines.sum" not in total.signature
    assert (total.start_line, total.end_line) == (9, 11)


def test_fallback_is_used_when_tree_sitter_is_not_there():
    out = fallback_outline(PY, "python")
    assert {"Inventory", "load_inventory", "free"} <= {s.name for s in out.symbols}
    assert any(i.text.startswith("from .models import") for i in out.imports)
