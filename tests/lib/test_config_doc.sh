#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# docs/configuration.md's parameter table is generated from lib/base/params.h: it must equal
# `trainmover-info --markdown`, between the two TM_PARAMS marker comments of the page.
# usage: test_config_doc.sh TRAINMOVER_INFO DOC
set -u
INFO=$1 DOC=$2
want=$("$INFO" --markdown) || { echo "FAIL trainmover-info --markdown"; exit 1; }
have=$(sed -n '/<!-- TM_PARAMS begin/,/<!-- TM_PARAMS end/p' "$DOC" | sed '1d;$d')
if [ -z "$have" ]; then
  echo "FAIL $DOC has no TM_PARAMS markers"; exit 1
fi
if [ "$want" != "$have" ]; then
  echo "FAIL $DOC is stale; regenerate the table between the markers with: trainmover-info --markdown"
  diff <(echo "$have") <(echo "$want")
  exit 1
fi
echo "ok   $DOC matches lib/base/params.h"
