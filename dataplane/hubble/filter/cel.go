package filter

import (
	"fmt"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/interpreter"
)

// celFlowVariable is the name Hubble gives the flow in CEL expressions ("flow" is the protobuf package).
const celFlowVariable = "_flow"

// celCostLimit bounds the work of one expression on one flow, so that a client cannot make the agent
// spend unbounded CPU per flow; an expression over the fields of a flow stays far below it. An
// evaluation over the limit fails, and a failed evaluation does not match, as in Hubble.
const celCostLimit = 100_000

// compileExperimental compiles experimental.cel_expression with cel-go, as Hubble does: boolean CEL
// expressions over the flow's protobuf fields ("_flow.verdict == Verdict.DROPPED"), ORed.
func compileExperimental(ff *flowpb.FlowFilter, path string) (Func, error) {
	exp := ff.GetExperimental()
	if err := refuseUnknown(path, exp.ProtoReflect()); err != nil {
		return nil, err
	}
	exprs := exp.GetCelExpression()
	if len(exprs) == 0 {
		return nil, nil // an empty message sets nothing
	}
	env, err := cel.NewEnv(
		cel.Container("flow"),
		cel.Types(&flowpb.Flow{}),
		cel.Variable(celFlowVariable, cel.ObjectType("flow.Flow")),
	)
	if err != nil {
		return nil, fmt.Errorf("creating the CEL environment of flows: %w", err)
	}
	programs, err := each(path+".cel_expression", exprs, func(path, expr string) (cel.Program, error) {
		ast, issues := env.Compile(expr)
		if issues.Err() != nil {
			return nil, &Error{Path: path, Problem: fmt.Sprintf("%q is not a valid CEL expression", expr), Err: issues.Err(),
				Fix: `write a boolean CEL expression over _flow, such as "_flow.verdict == Verdict.DROPPED"`}
		}
		if ast.OutputType() != cel.BoolType {
			return nil, &Error{Path: path, Problem: fmt.Sprintf("%q is of type %s, not bool", expr, ast.OutputType()),
				Fix: "write an expression that is true for the flows to match"}
		}
		prg, err := env.Program(ast, cel.CostLimit(celCostLimit))
		if err != nil {
			return nil, &Error{Path: path, Problem: fmt.Sprintf("%q cannot be planned", expr), Err: err,
				Fix: "simplify the expression"}
		}
		return prg, nil
	})
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		for _, prg := range programs {
			out, _, err := prg.Eval(flowActivation{f})
			if err != nil {
				continue
			}
			if b, ok := out.Value().(bool); ok && b {
				return true
			}
		}
		return false
	}, nil
}

// flowActivation binds _flow to one flow without building a map per evaluation.
type flowActivation struct{ f *flowpb.Flow }

func (a flowActivation) ResolveName(name string) (any, bool) {
	if name == celFlowVariable {
		return a.f, true
	}
	return nil, false
}

func (flowActivation) Parent() interpreter.Activation { return nil }
