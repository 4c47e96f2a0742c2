# Python binding tests (client/python/test_kvtier.py) against a real kvtierd.
# The first python3 that has numpy and pytest runs them: a pyenv or venv python3 early in
# PATH often lacks the Debian packages python3-numpy and python3-pytest.
if(TARGET kvtier AND TARGET kvtierd)
	set(_kvt_py "")
	find_program(_kvt_py_path NAMES python3)
	foreach(cand /usr/bin/python3 ${_kvt_py_path})
		if(NOT _kvt_py AND EXISTS ${cand})
			execute_process(COMMAND ${cand} -c "import numpy, pytest"
				RESULT_VARIABLE _kvt_py_rc OUTPUT_QUIET ERROR_QUIET)
			if(_kvt_py_rc EQUAL 0)
				set(_kvt_py ${cand})
			endif()
		endif()
	endforeach()
	if(_kvt_py)
		# -p no:cacheprovider and PYTHONDONTWRITEBYTECODE keep the source tree clean.
		kvt_add_test(python_binding
			COMMAND ${_kvt_py} -m pytest -q -p no:cacheprovider ${PROJECT_SOURCE_DIR}/client/python
			LABELS fast
			ENVIRONMENT "KVTIER_LIB=$<TARGET_FILE:kvtier>;KVTIER_BIN_DIR=$<TARGET_FILE_DIR:kvtierd>;PYTHONDONTWRITEBYTECODE=1")
	else()
		message(STATUS "kvtier: no python3 with numpy and pytest; python_binding test skipped")
		kvt_add_test(python_binding COMMAND sh -c "echo 'no python3 with numpy and pytest'; exit 77"
			LABELS fast)
	endif()
endif()
